"""Process settings for workers: glibc ``malloc`` thresholds, two ways.

Training workers keep freed memory (:func:`keep_freed_memory`), shard workers return it
(:func:`return_freed_memory` once, :func:`trim` after each item). Why both:

A training step frees and re-allocates the same large buffers every step (the token table's
12.6 MB dense gradient, activation and gradient maps of 1-4 MB). glibc serves such blocks with
``mmap`` and returns them on ``free``, so each step re-faults its pages in: ~1,500-44,000
minor page faults per tiny-model step (4-130 ms of system time on a 2-core VM, where a fault
is expensive). Raising the mmap and trim thresholds keeps freed blocks in the heap for reuse.

A shard worker (``pipelines/shard_map.py``: one actor that turns hundreds of shards into rows)
is the opposite case: its steady state is "a few MB of buffers per batch, freed", and with
glibc's dynamic threshold (each freed mmap-ed block raises the threshold to its size, up to
32 MB) those buffers move into the heap, where fragmentation keeps the peak RSS climbing with
the number of shards the actor has seen. Measured on the pseudo-mask actor (Ray, 24 shards of
500 32-px images, float32, peak RSS after shard 1 -> 24): by default 788 -> 842 MB in one run
and 731 -> 733 in another (it depends on where the heap fragments); with a fixed threshold
769 -> 795 and 726 -> 734; with both, 729 -> 733; the pool's time unchanged (389 s vs 391 s).
Nothing here runs at import; a worker calls these itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum; blocks above it are still mmap-ed
TRIM_THRESHOLD = 2**30  # free heap kept before it is returned to the OS


@functools.cache  # find_library runs ldconfig; trim() is called after every shard
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


RETURN_MMAP_THRESHOLD = 128 * 2**10  # glibc's initial value, fixed (no dynamic raise)


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 128 KB for this process, so blocks above it are always
    mmap-ed and returned on free (setting it turns off the dynamic raise); returns False (and
    changes nothing) where the C library is not glibc."""
    libc = _libc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, RETURN_MMAP_THRESHOLD) == 1


def trim() -> bool:
    """Return the free pages of every malloc arena to the OS (glibc ``malloc_trim(0)``); True
    if memory was released. A no-op returning False where the C library is not glibc."""
    libc = _libc()
    return libc is not None and libc.malloc_trim(0) == 1


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MB and its trim threshold to 1 GB for this process;
    returns False (and changes nothing) where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
