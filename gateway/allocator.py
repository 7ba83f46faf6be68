"""glibc malloc settings for a process that handles many multi-megabyte buffers (photos, decoded images).

By default glibc raises its mmap threshold after a large buffer is freed, so later 3-10 MB photos come from the
heap arenas (one per thread, up to 8 per core) and fragment them: the resident size of a long-running gateway
creeps up. A fixed 1 MiB threshold keeps large buffers in mmap (returned to the system when freed), and two arenas
bound the fragmentation. The benchmark's soak measures the effect (docs/benchmarks.md).
Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import structlog

log = structlog.get_logger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_for_large_buffers(mmap_threshold: int = 1 << 20, arenas: int = 2) -> bool:
    """Apply the settings (call at start, before threads); False where there is no glibc ``mallopt``."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_ARENA_MAX, arenas))
    log.debug("allocator_tuned", mmap_threshold=mmap_threshold, arenas=arenas, ok=ok)
    return ok
