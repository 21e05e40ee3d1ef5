"""Process-wide CPU settings that speed up the FMR loop.

Both are global to the process, so the loop applies only the harmless one itself
(:func:`flush_denormals`); :func:`keep_freed_memory` is applied by the ``fmr`` command
and the benchmarks, not by library calls from a user's training code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def flush_denormals() -> None:
    """Treat subnormal floats as zero.

    Tiny gradients deep in the decoder's backward become subnormal, which CPUs process
    many times slower; flushing them changes no decision in practice.
    """
    torch.set_flush_denormal(True)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the heap instead of returning it to the kernel.

    Each 224-px step allocates and frees activations of 25-50 MB; glibc serves those
    with fresh ``mmap`` calls, so every step page-faults and zero-fills ~0.5 GB again
    (≈ 5 % of a CPU step, docs/benchmarks.md). Afterwards peak memory stays reserved by
    the process until it exits. Returns False where it does not apply (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
