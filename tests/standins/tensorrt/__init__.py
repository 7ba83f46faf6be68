"""Stand-in ``tensorrt`` 10 (tests only; see tests/standins/README.md): builds "plans" that ONNX Runtime runs.

Faults (``STANDIN_FAULTS``, read at each call): ``ignore_input`` (inference sees zeros), ``swap_rows`` (the
rows of a batch come back reversed), ``broken_input:NAME`` (every run of a plan with a tensor NAME fails),
``sticky_after:N`` (after N good runs every ``execute_async_v3`` fails, as
after a sticky CUDA error), ``execute_raises`` (a Python exception from ``execute_async_v3``), ``slow_execute:S``
(each run sleeps S seconds), ``no_exec_context`` (``create_execution_context`` gives None: out of memory),
``build_raises`` (the builder raises ValueError), ``build_fails`` (it returns None), ``build_steps:N:S`` (N
progress steps of S seconds each; default 3 steps, no wait), ``bias:X`` (X is added to every output value),
``swap_columns:NAME`` (output NAME comes back with its last axis reversed: a [defocus, motion] pair swapped).
"""

from __future__ import annotations

import enum
import json
import os
import threading
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime
from pycuda import driver as _cuda

__version__ = os.environ.get("STANDIN_TRT_VERSION", "10.3.0.30")
MAGIC = b"STANDIN-PLAN\n"
runs = 0
"""Successful ``execute_async_v3`` calls in this process."""
_runs_lock = threading.Lock()


def _fault(name: str) -> list[str] | None:
    """The arguments of fault ``name`` (``name:a:b``) when it is set, else None."""
    for entry in _cuda.faults():
        parts = entry.split(":")
        if parts[0] == name:
            return parts[1:]
    return None


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64}
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64}


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1


class Dims(tuple[int, ...]):
    pass


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


# --- runtime


class _Plan:
    def __init__(self, header: dict[str, Any], onnx_bytes: bytes) -> None:
        self.header = header
        self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.io: dict[str, tuple[TensorIOMode, tuple[int, ...], DataType]] = {}
        model = onnx.load_model_from_string(onnx_bytes)
        for mode, values in ((TensorIOMode.INPUT, model.graph.input), (TensorIOMode.OUTPUT, model.graph.output)):
            for value in values:
                tensor = value.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
                self.io[value.name] = (mode, dims, _ONNX_TYPES[tensor.elem_type])
        if any(d < 0 for mode, dims, _ in self.io.values() for d in dims[1:]):
            self._infer_output_shapes()

    def _infer_output_shapes(self) -> None:
        """Symbolic output dimensions: TensorRT knows them from the network; here, from one run at batch 1."""
        feeds = {
            name: np.zeros((1, *dims[1:]), dtype=_NUMPY[dtype])
            for name, (mode, dims, dtype) in self.io.items()
            if mode == TensorIOMode.INPUT
        }
        names = [o.name for o in self.session.get_outputs()]
        for name, value in zip(names, self.session.run(None, feeds), strict=True):
            mode, _, dtype = self.io[name]
            self.io[name] = (mode, (-1, *np.shape(value)[1:]), dtype)


class ICudaEngine:
    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._names = list(plan.io)

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._plan.io[name][0]

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._plan.io[name][1])

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._plan.io[name][2]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[Dims]:
        rest = self._plan.io[name][1][1:]
        top = int(self._plan.header["max_batch"])
        return [Dims((1, *rest)), Dims((1, *rest)), Dims((top, *rest))]

    def create_execution_context(self) -> IExecutionContext | None:
        if _fault("no_exec_context") is not None:
            return None
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._plan = engine._plan
        self._addresses: dict[str, int] = {}
        self._batch = 1

    def set_tensor_address(self, name: str, address: int) -> bool:
        self._addresses[name] = int(address)
        return name in self._plan.io

    def set_input_shape(self, name: str, shape: tuple[int, ...] | Dims) -> bool:
        batch = int(next(iter(shape)))
        if not 1 <= batch <= int(self._plan.header["max_batch"]):
            return False
        self._batch = batch
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        dims = self._plan.io[name][1]
        return Dims((self._batch if dims[0] < 0 else dims[0], *dims[1:]))

    def _view(self, name: str) -> np.ndarray:
        _mode, dims, dtype = self._plan.io[name]
        shape = (self._batch if dims[0] < 0 else dims[0], *dims[1:])
        raw = _cuda.memory[self._addresses[name]]
        count = int(np.prod(shape))
        return raw[: count * np.dtype(_NUMPY[dtype]).itemsize].view(_NUMPY[dtype]).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        global runs
        if _fault("execute_raises") is not None:
            raise ValueError("stand-in: execute_async_v3 raised")
        sticky = _fault("sticky_after")
        broken = _fault("broken_input")  # only the plans with this input fail (one model's context is broken)
        if (sticky is not None and runs >= int(sticky[0])) or (broken is not None and broken[0] in self._plan.io):
            _cuda.event("execute_failed")
            return False
        if (slow := _fault("slow_execute")) is not None:
            time.sleep(float(slow[0]))
        feeds = {}
        for name, (mode, _dims, _dtype) in self._plan.io.items():
            if mode == TensorIOMode.INPUT:
                value = self._view(name).copy()
                feeds[name] = np.zeros_like(value) if _fault("ignore_input") is not None else value
        outputs = self._plan.session.run(None, feeds)
        bias = _fault("bias")
        names = [o.name for o in self._plan.session.get_outputs()]
        for name, value in zip(names, outputs, strict=True):
            out = np.asarray(value)
            if _fault("swap_rows") is not None and out.shape[0] > 1:
                out = out[::-1]
            if bias is not None:
                out = out + float(bias[0])
            if (swapped := _fault("swap_columns")) is not None and swapped[0] == name:
                out = out[..., ::-1]
            self._view(name)[...] = out
        with _runs_lock:
            runs += 1
        return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
        if not data.startswith(MAGIC):
            self._logger.log(ILogger.Severity.ERROR, "Serialization assertion: magic tag does not match")
            return None
        header_line, _, onnx_bytes = data[len(MAGIC) :].partition(b"\n")
        header = json.loads(header_line)
        if header["version"] != __version__:
            self._logger.log(
                ILogger.Severity.ERROR,
                f"Version tag does not match. Plan: {header['version']}, this TensorRT: {__version__}",
            )
            return None
        return ICudaEngine(_Plan(header, onnx_bytes))


# --- builder


class _Input:
    def __init__(self, name: str, shape: Dims) -> None:
        self.name = name
        self.shape = shape


class INetworkDefinition:
    def __init__(self) -> None:
        self.onnx: bytes = b""
        self._inputs: list[_Input] = []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> _Input:
        return self._inputs[index]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network = network
        self._errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse_from_file(self, path: str) -> bool:
        try:
            data = open(path, "rb").read()  # noqa: SIM115
            model = onnx.load_model_from_string(data)
        except Exception as exc:
            self._errors.append(str(exc))
            return False
        self._network.onnx = data
        for value in model.graph.input:
            dims = value.type.tensor_type.shape.dim
            shape = Dims(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
            self._network._inputs.append(_Input(value.name, shape))
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, name: str, low: Dims, opt: Dims, high: Dims) -> None:
        self.shapes[name] = (low, opt, high)


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"timing"

    def serialize(self) -> memoryview:
        return memoryview(self.data + b"+")


class IBuilderConfig:
    def __init__(self) -> None:
        self.pools: dict[str, int] = {}
        self.flags: list[str] = []
        self.profiles: list[IOptimizationProfile] = []
        self.progress_monitor: IProgressMonitor | None = None
        self._cache = ITimingCache(b"")

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool.name] = int(size)

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.append(flag.name)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> ITimingCache:
        return ITimingCache(bytes(data))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self._cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> memoryview | None:
        _cuda.event("build_started", pools=config.pools, flags=config.flags)
        if _fault("build_raises") is not None:
            raise ValueError("stand-in: the builder raised")
        steps = _fault("build_steps") or ["3", "0"]
        count, wait = int(steps[0]), float(steps[1]) if len(steps) > 1 else 0.0
        monitor: Any = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, count)
        for step in range(count):
            time.sleep(wait)
            if monitor is not None and not monitor.step_complete("Building engine", step):
                self._logger.log(ILogger.Severity.ERROR, "Build cancelled by the progress monitor")
                _cuda.event("build_cancelled", step=step)
                return None
        if monitor is not None:
            monitor.phase_finish("Building engine")
        if _fault("build_fails") is not None:
            self._logger.log(ILogger.Severity.ERROR, "stand-in: no tactic fits the memory limits")
            return None
        high = max(int(shapes[2][0]) for shapes in config.profiles[0].shapes.values())
        header = json.dumps({"version": __version__, "max_batch": high}).encode()
        _cuda.event("build_finished")
        return memoryview(MAGIC + header + b"\n" + network.onnx)
