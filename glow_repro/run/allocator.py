"""Keep freed tensor memory in the process heap on glibc (benchmarks/README.md).

A training step allocates and frees the same activation buffers (1-8 MB each at the reference
config; 33 MB and more for evaluation batches of 256) every step. glibc serves blocks that
large with fresh ``mmap`` pages and returns them to the kernel on free, so every step pays
~20,000 page faults and the kernel's zeroing of ~90 MB: a large share of a CPU step (see
``benchmarks/README.md``). Here glibc serves every block from its heap (no ``mmap``) and never
trims the heap, so freed blocks are reused by the next step. The arithmetic is untouched; peak
memory is unchanged, but the process keeps its peak until it exits.
"""

from __future__ import annotations

import ctypes
import functools
import platform

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_MAX = 2**31 - 1


@functools.cache
def retain_freed_memory() -> bool:
    """Stop glibc from serving blocks with ``mmap`` and from trimming its heap, once per process.

    Returns whether the setting is in effect (False off glibc, e.g. on macOS or musl).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_MAX) == 1
