"""Which heap allocator the gateway runs on, and whether jemalloc is installed.

Each photo passes through buffers of several megabytes (the MQTT payload as paho reads it, the decoded pixels,
the model batches) on several threads. glibc's malloc serves them from per-thread arenas that fragment: on the
benchmark's 10-minute soak the gateway's resident memory grew by 30 % (308 -> 401 MB) and kept creeping.
jemalloc returns freed pages to the system within seconds, so the systemd unit preloads it
(``LD_PRELOAD=libjemalloc.so.2``, Debian/Ubuntu package ``libjemalloc2``); the loader skips a missing library with
a warning and the gateway then runs on glibc. With ``MALLOC_CONF`` (below): jemalloc's default gives allocations
over 8 MiB (a decoded 12 MP photo at half size is 9 MB) fresh pages every time, which cost 19 ms of p50 latency
(136.6 against 117.6 ms, one device, this 2-core machine). ONNX Runtime's own arena is the other half of the
memory story (gateway/runtimes/onnxruntime.py). ``docs/benchmarks.md`` has the soak.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path
from typing import Literal

Allocator = Literal["jemalloc", "glibc", "unknown"]
JEMALLOC = "libjemalloc.so.2"
"""The name the unit preloads; the dynamic loader finds it in the architecture's library folder."""
MALLOC_CONF = "oversize_threshold:0"
"""jemalloc's options, as the unit sets them: no separate arena (and no immediate purge) for large allocations."""


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
