"""Where pairgraph reads and writes: the data root, the cache folder, and the one atomic write."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from pairgraph.errors import PairgraphError, io_error


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


#: what a name that becomes a folder may hold (a spec's, a study's, a cell's, a run id): letters, digits,
#: ``_ . -``, starting with a letter, digit or ``_`` (so never ``.``, ``..``, a hidden or an option-like name)
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"


def check_name(value: object, what: str) -> str:
    """``value`` when it is a folder-safe name (:data:`NAME_PATTERN`), else a one-line error naming ``what``.

    Checked at the door, so that no separator, ``..``, absolute path or control character reaches a path.
    """
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise PairgraphError(f"{what} {value!r} is not a folder-safe name",
                             "use up to 100 letters, digits, '_', '-' or '.', starting with a letter, digit or '_' "
                             "(no '/', no '..')")
    return value


def inside(root: str | os.PathLike[str], *parts: str) -> Path:
    """``root/parts…``, refused in one line unless it resolves inside ``root`` (symlinks followed)."""
    base = Path(root)
    target = base.joinpath(*parts)
    real_base, real = base.resolve(), target.resolve()
    if real != real_base and real_base not in real.parents:
        raise PairgraphError(f"{target} resolves to {real}, outside {real_base}",
                             "use a plain name (no '/', no '..', no link out of the folder)")
    return target


def refuse_replacing(written: str | os.PathLike[str], data: bytes | str, inputs: list[str | os.PathLike[str]],
                     flag: str) -> None:
    """Refuse, in one line, to write ``data`` to ``written`` when that file is one of the command's
    ``inputs`` and would change (rewriting the same bytes, e.g. a compiled folder's resolved spec, is harmless)."""
    out = Path(written)
    raw = data.encode() if isinstance(data, str) else data
    for given in inputs:
        if out.is_file() and Path(given).is_file() and out.samefile(given) and out.read_bytes() != raw:
            raise PairgraphError(f"writing {out} would replace the input file {given}",
                                 f"pass {flag} a folder that does not hold the command's input")
