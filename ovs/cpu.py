"""Process settings for CPU training workers: glibc ``malloc`` thresholds.

A training step frees and re-allocates the same large buffers every step (the token table's
12.6 MB dense gradient, activation and gradient maps of 1-4 MB). glibc serves such blocks with
``mmap`` and returns them on ``free``, so each step re-faults its pages in: ~1,500-44,000
minor page faults per tiny-model step (4-130 ms of system time on a 2-core VM, where a fault
is expensive). Raising the mmap and trim thresholds keeps freed blocks in the heap for reuse.
Nothing here runs at import; a worker calls :func:`keep_freed_memory` once.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum; blocks above it are still mmap-ed
TRIM_THRESHOLD = 2**30  # free heap kept before it is returned to the OS


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MB and its trim threshold to 1 GB for this process;
    returns False (and changes nothing) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
