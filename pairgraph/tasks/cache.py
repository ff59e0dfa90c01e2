"""The on-disk cache of decoded/tokenised data arrays (``.npz`` under ``cache_dir()``) and the
in-process memo in front of it.

A cache file's name carries a :func:`digest` of everything its content depends on (source file
signature, options, :data:`CACHE_VERSION`), so a stale file is never read; an unreadable file is
rebuilt and a file that cannot be written only warns (the run goes on uncached).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pairgraph.errors import PairgraphError, one_line
from pairgraph.paths import atomic_write

#: part of every cache key: bump it when the content of cached arrays changes
CACHE_VERSION = 1
#: in-process memo of loaded arrays (and encodings), keyed by cache file
MEMO: dict[str, Any] = {}


def digest(*parts: object) -> str:
    """16 hex digits of the SHA-256 of ``parts`` (as strings, joined by the unit separator)."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def file_signature(path: Path) -> str:
    """``resolved path|size|mtime_ns``: changes whenever the file is replaced or edited."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed .npz atomically; a cache that cannot be written only warns."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())
    except PairgraphError as e:  # atomic_write's one-line error (read-only home, full disk): run uncached
        warnings.warn(f"pairgraph: could not write cache: {e.message}", stacklevel=3)
    except OSError as e:  # the cache folder cannot be created
        warnings.warn(f"pairgraph: could not write cache {path}: {one_line(e)}", stacklevel=3)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of the .npz at ``path``, or None when it is absent or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:  # truncated/corrupt cache: rebuild
        warnings.warn(f"pairgraph: ignoring unreadable cache {path}: {e}", stacklevel=3)
        return None


def cached_arrays(cache: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays memoized under ``cache``, else read from that file, else ``build()`` and saved there."""
    key = str(cache)
    if key in MEMO:
        return MEMO[key]
    arrays = load_npz(cache)
    if arrays is None:
        arrays = build()
        save_npz(cache, **arrays)
    MEMO[key] = arrays
    return arrays
