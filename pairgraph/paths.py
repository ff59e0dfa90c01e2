"""Where pairgraph reads and writes: the data root, the cache folder, and the one atomic write."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pairgraph.errors import io_error


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding offline data (CIFAR-10 archive, tinyshakespeare.txt, gpt2/ BPE files).

    An explicit path (``task.data_dir``, a CLI flag) wins, then ``$PAIRGRAPH_DATA``; both are
    returned as given even when they do not exist, so that errors name the user's path. Otherwise
    the first existing of ``../shared/data`` relative to the current directory and relative to the
    repository root (parent of the ``pairgraph`` package); when neither exists the former is
    returned. Nothing is checked here: a missing file raises when it is actually needed.
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get("PAIRGRAPH_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [
        Path.cwd() / ".." / "shared" / "data",
        Path(__file__).resolve().parent.parent / ".." / "shared" / "data",
    ]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]


def cache_dir() -> Path:
    """Cache for decoded/tokenised data and trained guides: ``$PAIRGRAPH_CACHE`` or ``~/.cache/pairgraph``."""
    env = os.environ.get("PAIRGRAPH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pairgraph"


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a uniquely named temporary file, fsync and rename.

    Readers never see half a file, concurrent writers (torchrun ranks) never share a temporary
    file, and on failure the previous ``path`` is untouched and the temporary file removed. A
    failed write raises a one-line :class:`~pairgraph.errors.PairgraphError`.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise io_error(e, path, "write") from None
