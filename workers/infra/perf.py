"""Process-level performance settings for numeric workers."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_done = False


def tune_malloc() -> bool:
    """Keep freed large blocks in glibc's heap instead of returning them to the OS.

    The Plackett–Luce kernels allocate many short-lived arrays of several MB per iteration; with
    glibc's defaults each one is a fresh ``mmap`` whose pages fault in one by one, which costs more
    than the arithmetic (measured: 2×). Raising the mmap and trim thresholds lets numpy reuse warm
    memory. A no-op (returns False) outside glibc.
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) \
            and libc.mallopt(M_TOP_PAD, 1 << 28)
        _done = bool(ok)
    except (OSError, AttributeError):
        _done = False
    return _done


def freeze_heap() -> int:
    """Move every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    A worker holds the objects of torch, transformers and its loaded models (10⁵–10⁶ of them), and
    each full collection walks all of them: a task that builds 10⁵ small tuples (a chunk's
    comparisons) triggers several and spends most of its time there (measured: 7× on that loop).
    Objects loaded once for the life of the process are never garbage, so they are frozen after
    start-up and after each model load; objects made later are collected as usual. Returns how many
    objects are frozen.
    """
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
