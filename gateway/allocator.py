"""Which heap allocator the gateway runs on, and whether jemalloc is installed.

Each photo passes through buffers of several megabytes (the MQTT payload as paho reads it, the decoded pixels,
the model batches) on several threads. glibc's malloc serves them from per-thread arenas that fragment: on the
benchmark's 10-minute soak the gateway's resident memory grew by 30 % (308 -> 401 MB) and kept creeping.
jemalloc returns freed pages to the system within seconds, so the systemd unit preloads it
(``LD_PRELOAD=libjemalloc.so.2``, Debian/Ubuntu package ``libjemalloc2``); the loader skips a missing library with
a warning and the gateway then runs on glibc. ``docs/benchmarks.md`` has the measurements.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path
from typing import Literal

Allocator = Literal["jemalloc", "glibc", "unknown"]
JEMALLOC = "libjemalloc.so.2"
"""The name the unit preloads; the dynamic loader finds it in the architecture's library folder."""


def active(maps: Path = Path("/proc/self/maps")) -> Allocator:
    """The allocator of this process: jemalloc when its library is mapped (preloaded), else glibc's."""
    try:
        text = maps.read_text()
    except OSError:
        return "unknown"
    return "jemalloc" if "libjemalloc" in text else "glibc"


def jemalloc_installed() -> bool:
    """Whether the loader can find jemalloc here (what ``LD_PRELOAD=libjemalloc.so.2`` needs)."""
    return ctypes.util.find_library("jemalloc") is not None
