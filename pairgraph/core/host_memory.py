"""Keep the host memory a CPU step frees for the next step, instead of handing it back to the kernel.

glibc's malloc returns the free memory at the top of its heap to the kernel once it exceeds a trim threshold
(by default twice the largest mmapped block freed so far, at most 64 MiB), and serves blocks above an mmap
threshold from fresh mappings. Either way the next step writes to memory the kernel must map and zero again,
one 4 KiB page fault at a time. A guided step frees more at once than the target's step, the guide's forward or
the gram work alone do, so it alone paid this: on the RNN pair at batch 256, 18,978 faults a step, against none
for each part alone (docs/performance.md, "The RNN pair's guided step (session 12)"). :func:`keep_freed_memory`
raises both thresholds, so the memory a step frees stays in the process and the next step reuses it; the
resident set then stays at the step's peak, which every step reaches anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: both thresholds: blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap is kept
KEEP_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap, then trim threshold to :data:`KEEP_BYTES` for this process (once). False, and nothing
    changed, where the C library has no ``mallopt`` (not glibc: macOS, musl) or refuses the mmap threshold (the
    trim threshold alone would freeze the mmap threshold where it stands, which can be worse than glibc's own)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int  # int mallopt(int, int)
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
