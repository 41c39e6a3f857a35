"""Host memory of a CPU run: keep the memory a step frees for the next step (glibc ``mallopt``).

A training step (or a sampler step) allocates and frees the same activations and gradients every time. glibc's
``malloc`` gives much of that back to the kernel as soon as it is freed — blocks above its mmap threshold at once, the
heap's free top above its trim threshold — and the next step faults it in again, the kernel zero-filling every
4 KiB page. On the 2-core CPU of docs/benchmarks.md ("Host memory") that made the bf16 batch-2 training step of
SR-DiT-B/1 1.4× and of DiT^DH-S 1.14× slower (the DDT head's weights, up to 100 MB each, are above any mmap
threshold). :func:`keep_freed_host_memory` makes glibc serve every block from its heap (no ``mmap`` per block) and
never trim the heap, so after the first steps a step faults no page in; the peak RSS stayed within 2 % (the heap
holds what one step used at once).

``speedrun-diffusion fit / validate / test / predict`` call it when the trainer runs on CPU and ``speedrun-diffusion
sample`` when it samples on CPU; call it once at the start of your own CPU script. It is a process-wide setting of
glibc (inherited by forked data-loader workers) and does nothing elsewhere (macOS, Windows, musl) or when the user set
glibc's own malloc settings (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_MAX_`` or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``), which win.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["keep_freed_host_memory"]

# mallopt parameters, glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def user_set_malloc() -> bool:
    """True when the environment configures glibc's malloc itself (its settings are left alone)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc." in tunables


def keep_freed_host_memory() -> bool:
    """Keep freed host memory in the process instead of returning it to the kernel (module docstring): glibc's
    ``mallopt(M_MMAP_MAX, 0)`` (no block of its own mapping: they come from the heap) and ``mallopt(M_TRIM_THRESHOLD,
    -1)`` (never trim the heap). Returns True when applied, False where nothing changed (not glibc, or the user's
    malloc settings in the environment)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or user_set_malloc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
