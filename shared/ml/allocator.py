"""Keep freed memory for reuse: glibc's malloc tuned so that tiled inference stops churning pages.

By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and hands it back to the kernel on ``free``, so each tile's activations are faulted in
page by page again. On a 1500×1000 → ×4 upscale (24 MP out) a third of the CPU time went to the
kernel (5.5 M minor page faults). With mmap off (``M_MMAP_MAX`` = 0) and trimming off
(``M_TRIM_THRESHOLD`` at its maximum) freed blocks stay in the heap and the next tile reuses
them: system share 33 % → 4 %, faults 5.5 M → 0.4 M, for a higher peak RSS (the heap keeps its
high-water mark; `python -m benchmarks.large_image`, one thread, 2-core AMD EPYC).

Those settings hold for the main arena only: a thread (where a service runs inference, off its
event loop) gets an arena of its own that maps and trims its heaps regardless, and a 512² colour
denoise run there took 12,000 page faults a call (0.766 s against 0.757 s on the main thread).
So every thread shares the main arena (``M_ARENA_MAX`` = 1): a service runs one inference at a
time, and its other threads allocate little. The limit binds only arenas made after it, so a
process tunes this before any thread allocates (`bootstrap.configure_process` does it first):
tuned after tracing and metrics had started theirs, a service's inference threads were handed
those arenas in turn and a 512² colour denoise faulted ~35,000 pages in again every other job.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tune this process's glibc malloc as the module says; False where it cannot (not Linux,
    or a C library without ``mallopt``, such as musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) for param, value in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX), (M_ARENA_MAX, 1)))
