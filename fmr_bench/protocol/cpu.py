"""Process-wide CPU settings that speed up the FMR loop.

Both are global to the process. The loops (batched and reference alike) apply the
harmless one, :func:`flush_denormals`, only while they run; :func:`keep_freed_memory` is
applied by the ``fmr`` command and the benchmarks, not by library calls from a user's
training code.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


_flush_depth = 0


@contextlib.contextmanager
def flush_denormals():
    """Treat subnormal floats as zero while the FMR loop runs (both loops use it alike).

    Tiny gradients deep in the decoder's backward become subnormal, which CPUs process
    many times slower; flushing them changes no decision in practice. PyTorch offers no
    way to read the flag, so on leaving the outermost block it is set back to PyTorch's
    default (off): a library call does not leave process-wide state behind.
    """
    global _flush_depth
    _flush_depth += 1
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


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
