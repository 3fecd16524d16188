"""A caching policy for host memory in CPU training: glibc keeps freed large blocks for reuse.

glibc's malloc serves every block over its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
with a fresh ``mmap`` and returns it to the kernel on ``free``. A training step allocates and frees
the same activation, gradient and logits tensors every iteration, hundreds of MB of them, so on the
CPU each step pays a page fault and a kernel page-zeroing for every 4 KiB of them again. On the
2-core bench machine (docs/performance_journal.md) keeping them made pretrain_gpt.py's steps 8-12% (fp32)
and 11-18% (bf16) faster, and a plain HF training loop's up to 25% faster.

:func:`keep_freed_memory` raises the mmap threshold and the trim threshold, so freed blocks stay in
the heap and the next step reuses pages that are already mapped: the CPU counterpart of the CUDA
caching allocator. The process's RSS then stays at its peak instead of going down between steps
(the peak itself is unchanged). Training applies it on the CPU unless
``MINDSPEED_LLM_CPU_MALLOC=default``; it is process-wide and cannot be undone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "MINDSPEED_LLM_CPU_MALLOC"
# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int
_TOP_PAD = 64 << 20

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 2 GiB in the heap; True if it took effect (glibc only).

    Skipped (False) where the C library is not glibc or ``MINDSPEED_LLM_CPU_MALLOC=default``.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _LARGEST), (_M_TRIM_THRESHOLD, _LARGEST), (_M_TOP_PAD, _TOP_PAD)))
    _applied = ok
    return ok
