"""Stand-in ``pycuda.driver``: devices, contexts, streams and "device" memory kept in a registry.

Faults (``STANDIN_FAULTS``): ``no_cuda`` (``init`` raises), ``detach_raises`` (releasing a context raises),
``free_raises`` (freeing a pinned host buffer raises).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from typing import Any

import numpy as np

_lock = threading.RLock()
_addresses = itertools.count(0x7F0000000000, 0x100000)
memory: dict[int, np.ndarray] = {}
"""Address -> its bytes (uint8): pinned host buffers (mapped) and device allocations alike."""
allocated = 0
"""Bytes allocated and not freed."""
contexts = 0
"""Contexts made and not detached."""
synchronized = 0
"""Stream synchronisations."""
_current: list[Context] = []

DEVICES: dict[str, dict[str, Any]] = {
    "orin-nano": {"name": "Orin (nvgpu)", "cc": (8, 7), "integrated": 1, "memory": 7_620_000_000, "sms": 8},
    "orin-nx": {"name": "Orin (nvgpu)", "cc": (8, 7), "integrated": 1, "memory": 15_650_000_000, "sms": 8},
    "agx-orin": {"name": "Orin (nvgpu)", "cc": (8, 7), "integrated": 1, "memory": 64_300_000_000, "sms": 16},
    "rtx": {"name": "NVIDIA GeForce RTX 3060", "cc": (8, 6), "integrated": 0, "memory": 12_500_000_000, "sms": 28},
}
CONTEXT_BYTES = 64 << 20
"""What a context itself takes (so ``mem_get_info`` moves when one is made)."""


def faults() -> set[str]:
    return {f.strip() for f in os.environ.get("STANDIN_FAULTS", "").split(",") if f.strip()}


def event(kind: str, **fields: Any) -> None:
    """Append one JSON line to ``STANDIN_EVENTS`` (when set)."""
    path = os.environ.get("STANDIN_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": kind, "pid": os.getpid(), **fields}) + "\n")


def _device() -> dict[str, Any]:
    return DEVICES[os.environ.get("STANDIN_GPU", "orin-nano")]


class Error(Exception): ...


class LogicError(Error): ...


class RuntimeError(Error): ...


class MemoryError(Error): ...


def init(flags: int = 0) -> None:
    if "no_cuda" in faults():
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")


def get_version() -> tuple[int, int, int]:
    return (12, 6, 0)


def get_driver_version() -> int:
    return int(os.environ.get("STANDIN_CUDA_DRIVER", "12060"))


class ctx_flags:
    SCHED_AUTO = 0
    SCHED_SPIN = 1
    SCHED_YIELD = 2
    SCHED_BLOCKING_SYNC = 4
    MAP_HOST = 8


class host_alloc_flags:
    PORTABLE = 1
    DEVICEMAP = 2
    WRITECOMBINED = 4


class device_attribute:
    INTEGRATED = 18
    CAN_MAP_HOST_MEMORY = 19
    COMPUTE_CAPABILITY_MAJOR = 75
    COMPUTE_CAPABILITY_MINOR = 76
    MULTIPROCESSOR_COUNT = 16


class Context:
    def __init__(self) -> None:
        self.alive = True

    def push(self) -> None:
        _current.append(self)

    @staticmethod
    def pop() -> None:
        if _current:
            _current.pop()

    def detach(self) -> None:
        global allocated, contexts
        if "detach_raises" in faults():
            raise LogicError("cuCtxDetach failed: context is destroyed")
        with _lock:
            if self.alive:
                self.alive = False
                contexts -= 1
                allocated -= CONTEXT_BYTES

    @staticmethod
    def synchronize() -> None:
        pass


class Device:
    def __init__(self, number: int) -> None:
        if number >= self.count():
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {number}")
        self.number = number

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return str(_device()["name"])

    def compute_capability(self) -> tuple[int, int]:
        major, minor = _device()["cc"]
        return int(major), int(minor)

    def total_memory(self) -> int:
        return int(_device()["memory"])

    def get_attribute(self, attr: int) -> int:
        if attr == device_attribute.INTEGRATED:
            return int(_device()["integrated"])
        if attr == device_attribute.MULTIPROCESSOR_COUNT:
            return int(_device()["sms"])
        if attr == device_attribute.CAN_MAP_HOST_MEMORY:
            return 1
        raise LogicError(f"attribute {attr} not in the stand-in")

    def make_context(self, flags: int = 0) -> Context:
        global allocated, contexts
        context = Context()
        with _lock:
            contexts += 1
            allocated += CONTEXT_BYTES
        context.push()
        return context


class Stream:
    def __init__(self, flags: int = 0) -> None:
        self.handle = next(_addresses)

    def synchronize(self) -> None:
        global synchronized
        with _lock:
            synchronized += 1
        event("synchronize")

    def is_done(self) -> bool:
        return True


def _register(nbytes: int) -> tuple[int, np.ndarray]:
    global allocated
    data = np.zeros(max(1, nbytes), dtype=np.uint8)
    with _lock:
        address = next(_addresses)
        memory[address] = data
        allocated += data.nbytes
    return address, data


def _unregister(address: int) -> None:
    global allocated
    with _lock:
        data = memory.pop(address, None)
        if data is not None:
            allocated -= data.nbytes


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.address, _ = _register(nbytes)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        _unregister(self.address)


class HostAllocation:
    """The ``base`` of a ``pagelocked_empty`` array: its bytes are in the registry (mapped, as on a Jetson)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        self.address, self._data = _register(nbytes)
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (self._data.ctypes.data, False),
            "version": 3,
        }

    def get_device_pointer(self) -> int:
        return self.address

    def free(self) -> None:
        if "free_raises" in faults():
            raise LogicError("cuMemFreeHost failed: invalid argument")
        _unregister(self.address)


def pagelocked_empty(shape: int | tuple[int, ...], dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    return np.asarray(HostAllocation(dims, np.dtype(dtype)))


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


def mem_get_info() -> tuple[int, int]:
    total = int(_device()["memory"])
    return total - allocated, total


def _bytes(pointer: int | DeviceAllocation) -> np.ndarray:
    return memory[int(pointer)]


def memcpy_htod_async(dest: int | DeviceAllocation, src: np.ndarray, stream: Stream | None = None) -> None:
    raw = np.ascontiguousarray(src).view(np.uint8).ravel()
    _bytes(dest)[: raw.size] = raw


def memcpy_dtoh_async(dest: np.ndarray, src: int | DeviceAllocation, stream: Stream | None = None) -> None:
    raw = dest.reshape(-1).view(np.uint8)
    raw[:] = _bytes(src)[: raw.size]


def reset() -> None:
    """Forget everything (between tests)."""
    global allocated, contexts, synchronized
    with _lock:
        memory.clear()
        allocated = contexts = synchronized = 0
        _current.clear()
