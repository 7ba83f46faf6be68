"""TensorRT 10 (10.3 up to 11, not 11: JetPack 6.1/6.2) and pycuda: run a serialized plan on one inference thread.

One thread per engine owns its CUDA context: it makes the context, deserializes the plan, allocates every
buffer once (for the largest batch of the optimization profile), runs ``execute_async_v3`` on its stream and
frees everything on ``close``. Other threads hand it requests through a queue; requests that arrive together
are run as one batch (up to the profile's maximum). pycuda's context does not follow into other threads, so
the one place another thread touches CUDA (``memory``) pushes the context and pops it after.

On an integrated GPU (Jetson: one memory for CPU and GPU) tensors live in mapped pinned host memory that the
GPU addresses directly: no copies. On a discrete GPU, pinned host buffers are copied to and from device
buffers on the stream. Tensors are addressed by name (``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``); none of the pre-10 binding APIs.

Needs ``tensorrt`` (JetPack's, in a venv with system site packages) and ``pycuda`` (``[jetson]`` extra);
importing this module fails without them, which the backend selection reports.
"""

from __future__ import annotations

import queue
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import pycuda.driver as cuda
import structlog
import tensorrt as trt

from gateway.runtimes.runtime import InferenceError, PlanError, TensorInfo

log = structlog.get_logger(__name__)

ENGINE = "tensorrt"
MIN_VERSION = (10, 3)
CEILING = (11, 0)
"""The first unsupported version: TensorRT 11 removed ``BuilderFlag.FP16``/``INT8``, and JetPack 6 ships 10.3."""

_NUMPY: dict[trt.DataType, type[np.generic]] = {
    trt.DataType.FLOAT: np.float32,
    trt.DataType.HALF: np.float16,
    trt.DataType.INT32: np.int32,
    trt.DataType.INT64: np.int64,
    trt.DataType.INT8: np.int8,
    trt.DataType.UINT8: np.uint8,
    trt.DataType.BOOL: np.bool_,
}


def version() -> tuple[int, ...]:
    return tuple(int(part) for part in trt.__version__.split(".")[:3] if part.isdigit())


@dataclass(frozen=True)
class GpuInfo:
    tensorrt_version: str
    name: str
    compute_capability: tuple[int, int]
    integrated: bool
    """True on a Jetson (CPU and GPU share memory)."""
    total_memory: int
    multiprocessors: int = 0
    board: str = ""
    """The device tree's model (a Jetson's module and carrier), "" elsewhere."""
    cuda_driver: str = ""
    l4t: str = ""
    """The Jetson Linux release (``R36.4.3``), "" elsewhere."""

    def device(self) -> str:
        """What tells GPUs of one name apart: every Orin is "Orin (nvgpu)" and sm87; Nano, NX and AGX differ in
        board, multiprocessors and memory."""
        board = f"{self.board}, " if self.board else ""
        return f"{board}{self.multiprocessors} SMs, {round(self.total_memory / 2**30)} GiB"


BOARD_MODEL = Path("/proc/device-tree/model")
L4T_RELEASE = Path("/etc/nv_tegra_release")


def _board() -> str:
    try:
        return BOARD_MODEL.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
    except OSError:
        return ""


def _l4t() -> str:
    """``# R36 (release), REVISION: 4.3, GCID: ...`` -> ``R36.4.3``; the first line as it is if it reads otherwise."""
    try:
        first = L4T_RELEASE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""
    found = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", first)
    return f"R{found[1]}.{found[2]}" if found else first.strip()


def probe(device: int = 0) -> GpuInfo:
    """The GPU TensorRT would run on; raises InferenceError saying why there is none usable."""
    if version()[:2] < MIN_VERSION:
        floor = ".".join(map(str, MIN_VERSION))
        raise InferenceError(f"TensorRT {trt.__version__} is older than {floor} (JetPack 6.1)")
    if version()[:2] >= CEILING:
        raise InferenceError(
            f"TensorRT {trt.__version__} is not supported: 11 removed the FP16/INT8 builder flags and JetPack 6 does"
            " not support it; use JetPack's TensorRT 10 (a venv with --system-site-packages), or on a PC"
            " pip install 'tensorrt-cu12>=10.3,<11'"
        )
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as exc:
        raise InferenceError(f"CUDA does not answer: {exc}") from exc
    if device >= count:
        raise InferenceError(f"no CUDA device {device} ({count} found)")
    dev = cuda.Device(device)
    driver = cuda.get_driver_version()
    return GpuInfo(
        tensorrt_version=trt.__version__,
        name=dev.name(),
        compute_capability=dev.compute_capability(),
        integrated=bool(dev.get_attribute(cuda.device_attribute.INTEGRATED)),
        total_memory=dev.total_memory(),
        multiprocessors=dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT),
        board=_board(),
        cuda_driver=f"{driver // 1000}.{driver % 1000 // 10}",
        l4t=_l4t(),
    )


MEMINFO = Path("/proc/meminfo")


def available_memory(device: int = 0) -> int:
    """Bytes an engine build may use: ``MemAvailable`` on an integrated GPU (a Jetson: one memory for CPU and
    GPU), else the GPU's free memory."""
    cuda.init()
    dev = cuda.Device(device)
    if dev.get_attribute(cuda.device_attribute.INTEGRATED):
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        raise InferenceError(f"{MEMINFO} has no MemAvailable line")
    context = dev.make_context()
    try:
        free, _total = cuda.mem_get_info()
    finally:
        cuda.Context.pop()
        context.detach()
    return int(free)


class Logger(trt.ILogger):
    """TensorRT's messages into the structured log; the last errors are kept for exception messages."""

    def __init__(self, min_severity: trt.ILogger.Severity = trt.ILogger.Severity.WARNING) -> None:
        trt.ILogger.__init__(self)
        self._min = int(min_severity)
        self.errors: deque[str] = deque(maxlen=5)

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        if int(severity) <= int(trt.ILogger.Severity.ERROR):
            self.errors.append(msg)
            log.error("tensorrt", message=msg)
        elif int(severity) <= self._min:
            log.warning("tensorrt", message=msg)


class _HostAllocation(Protocol):
    """pycuda's pinned allocation behind a ``pagelocked_empty`` array (its ``base``)."""

    def get_device_pointer(self) -> int: ...

    def free(self) -> None: ...


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    """As the engine declares it (-1: dynamic)."""
    host: np.ndarray
    """Pinned host buffer for the largest batch."""
    device: int
    allocation: cuda.DeviceAllocation | None = None
    """The device buffer (discrete GPU); None where ``host`` is mapped."""


@dataclass
class _Request:
    inputs: Mapping[str, np.ndarray]
    batch: int
    future: Future[dict[str, np.ndarray]] = field(default_factory=Future)


class TensorRTRuntime:
    """One TensorRT plan, run by its own inference thread.

    No wait is unbounded: loading waits ``load_timeout_s``, a call ``run_timeout_s``, ``close`` its ``timeout``. A
    closed runtime answers every call with ``InferenceError``; releasing is best-effort, step by step.
    """

    engine = ENGINE

    def __init__(self, plan: Path, device: int = 0, load_timeout_s: float = 300.0, run_timeout_s: float = 60.0) -> None:
        self.plan = plan
        self._device_index = device
        self._run_timeout_s = run_timeout_s
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._tensors: list[_Tensor] = []
        self._max_batch = 1
        self._context: cuda.Context | None = None
        self._lock = threading.Lock()
        self._closed = False
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name=f"tensorrt-{plan.stem}", daemon=True)
        self._thread.start()
        try:
            ready.result(load_timeout_s)
        except FutureTimeout:
            self.close(0)
            raise InferenceError(f"{plan.name}: not loaded within {load_timeout_s:.0f} s") from None
        self._inputs = tuple(self._info(t) for t in self._tensors if t.is_input)
        self._outputs = tuple(self._info(t) for t in self._tensors if not t.is_input)

    @staticmethod
    def _info(tensor: _Tensor) -> TensorInfo:
        shape = tuple(None if d < 0 else d for d in tensor.shape)
        return TensorInfo(tensor.name, shape, tensor.dtype.name)

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches = {int(np.shape(v)[0]) for v in inputs.values()}
        if len(batches) != 1:
            raise InferenceError(f"{self.plan.name}: inputs have different batch sizes {sorted(batches)}")
        request = _Request(inputs, batches.pop())
        if request.batch > self._max_batch:
            raise InferenceError(f"{self.plan.name}: batch {request.batch} > the engine's {self._max_batch}")
        with self._lock:  # never queued behind close's None: nobody would answer it
            if self._closed or not self._thread.is_alive():
                raise InferenceError(f"{self.plan.name}: the runtime is closed")
            self._requests.put(request)
        try:
            return request.future.result(self._run_timeout_s)
        except FutureTimeout:
            raise InferenceError(f"{self.plan.name}: no answer within {self._run_timeout_s:.0f} s") from None

    def memory(self) -> tuple[int, int]:
        """Free and total GPU memory, from any thread (pushes this runtime's context, pops it after)."""
        with self._current():
            free, total = cuda.mem_get_info()
        return int(free), int(total)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the calls queued so far, then release everything (waits at most ``timeout``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._requests.put(None)
        self._thread.join(timeout)
        busy = self._thread.is_alive()
        if busy:
            log.warning("tensorrt_close_timeout", plan=self.plan.name, timeout_s=timeout)
        self._fail_queued(marker=busy)

    def _fail_queued(self, marker: bool = False) -> None:
        """Answer the calls still queued; with ``marker`` the stop marker goes back, for a thread still busy (a
        load or a batch past the close's timeout) to find once it is done and release everything."""
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                request.future.set_exception(InferenceError(f"{self.plan.name}: the runtime is closed"))
        if marker:
            self._requests.put(None)

    @contextmanager
    def _current(self) -> Iterator[None]:
        """Make this runtime's CUDA context current in the calling thread for the block."""
        if self._context is None:
            raise InferenceError(f"{self.plan.name}: no CUDA context")
        if threading.current_thread() is self._thread:
            yield
            return
        self._context.push()
        try:
            yield
        finally:
            cuda.Context.pop()

    # --- everything below runs on the inference thread

    def _serve(self, ready: Future[None]) -> None:
        try:
            self._load()
        except Exception as exc:
            with self._lock:
                self._closed = True
            try:
                self._release()
            finally:
                error = exc if isinstance(exc, InferenceError) else InferenceError(f"{self.plan.name}: {exc}")
                ready.set_exception(error)
            return
        ready.set_result(None)
        held: deque[_Request] = deque()
        running = True
        try:
            while running or held:
                first = held.popleft() if held else self._requests.get()
                if first is None:
                    break
                batch, total = [first], first.batch
                while running and total < self._max_batch:
                    try:
                        more = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        running = False
                    elif total + more.batch <= self._max_batch:
                        batch.append(more)
                        total += more.batch
                    else:
                        held.append(more)
                        break
                self._execute(batch, total)
        finally:
            self._release()

    def _load(self) -> None:
        cuda.init()
        dev = cuda.Device(self._device_index)
        integrated = bool(dev.get_attribute(cuda.device_attribute.INTEGRATED))
        flags = cuda.ctx_flags.SCHED_BLOCKING_SYNC | (cuda.ctx_flags.MAP_HOST if integrated else 0)
        self._context = dev.make_context(flags)
        self._logger = Logger()
        self._runtime = trt.Runtime(self._logger)
        # TensorRT objects live in attributes only, so _release frees them while the context is current
        self._engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self._engine is None:
            why = "; ".join(self._logger.errors) or "no reason given"
            raise PlanError(
                f"{self.plan.name}: TensorRT {trt.__version__} cannot load it (built for another TensorRT or GPU?):"
                f" {why}"
            )
        self._exec = self._engine.create_execution_context()
        if self._exec is None:
            raise InferenceError(f"{self.plan.name}: cannot create an execution context (out of GPU memory?)")
        self._stream = cuda.Stream()
        self._mapped = integrated
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._max_batch = self._profile_batch(inputs)
        for name in names:
            self._tensors.append(self._allocate(name, name in inputs))
        for tensor in self._tensors:
            if not self._exec.set_tensor_address(tensor.name, tensor.device):
                raise InferenceError(f"{self.plan.name}: cannot bind tensor {tensor.name!r}")
        log.info(
            "tensorrt_engine_loaded",
            plan=self.plan.name,
            gpu=dev.name(),
            mapped_memory=integrated,
            max_batch=self._max_batch,
            tensors={t.name: list(t.shape) for t in self._tensors},
        )

    def _profile_batch(self, inputs: list[str]) -> int:
        """The largest batch every input accepts (profile 0's maximum, or the static batch)."""
        batches = []
        for name in inputs:
            shape = _dims(self._engine.get_tensor_shape(name))
            if shape[0] >= 0:
                batches.append(shape[0])
            else:
                batches.append(_dims(self._engine.get_tensor_profile_shape(name, 0)[2])[0])
        return min(batches) if batches else 1

    def _allocate(self, name: str, is_input: bool) -> _Tensor:
        engine = self._engine
        shape = _dims(engine.get_tensor_shape(name))
        if any(d < 0 for d in shape[1:]):
            raise InferenceError(f"{self.plan.name}: tensor {name!r} {list(shape)}: only the batch may be dynamic")
        trt_type = engine.get_tensor_dtype(name)
        if trt_type not in _NUMPY:
            raise InferenceError(f"{self.plan.name}: tensor {name!r} has unsupported type {trt_type}")
        dtype = np.dtype(_NUMPY[trt_type])
        full = (self._max_batch if shape[0] < 0 else shape[0], *shape[1:])
        if self._mapped:
            host = cuda.pagelocked_empty(full, dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
            pointer = cast(_HostAllocation, host.base).get_device_pointer()
            return _Tensor(name, is_input, dtype, shape, host, int(pointer))
        host = cuda.pagelocked_empty(full, dtype)
        allocation = cuda.mem_alloc(max(1, host.nbytes))
        return _Tensor(name, is_input, dtype, shape, host, int(allocation), allocation)

    def _execute(self, batch: list[_Request], total: int) -> None:
        try:
            results = self._infer(batch, total)
        except Exception as exc:
            error = exc if isinstance(exc, InferenceError) else InferenceError(f"{self.plan.name}: {exc}")
            for request in batch:
                request.future.set_exception(error)
            return
        start = 0
        for request in batch:
            stop = start + request.batch
            request.future.set_result({name: value[start:stop].copy() for name, value in results.items()})
            start = stop

    def _infer(self, batch: list[_Request], total: int) -> dict[str, np.ndarray]:
        for tensor in self._tensors:
            if not tensor.is_input:
                continue
            offset = 0
            for request in batch:
                if tensor.name not in request.inputs:
                    raise InferenceError(f"{self.plan.name}: input {tensor.name!r} missing")
                value = np.asarray(request.inputs[tensor.name])
                if value.shape[1:] != tuple(tensor.host.shape[1:]):
                    raise InferenceError(
                        f"{self.plan.name}: input {tensor.name!r} {list(value.shape)} does not fit {list(tensor.shape)}"
                    )
                tensor.host[offset : offset + request.batch] = value
                offset += request.batch
            if tensor.shape[0] < 0 and not self._exec.set_input_shape(tensor.name, (total, *tensor.shape[1:])):
                raise InferenceError(f"{self.plan.name}: batch {total} is outside the optimization profile")
            if tensor.allocation is not None:
                cuda.memcpy_htod_async(tensor.device, tensor.host[:total], self._stream)
        outputs: dict[str, np.ndarray] = {}
        try:  # whatever happens, nothing of this batch is still running on the stream when the next one is written
            queued = self._exec.execute_async_v3(self._stream.handle)
            for tensor in self._tensors if queued else ():
                if tensor.is_input:
                    continue
                rows = _dims(self._exec.get_tensor_shape(tensor.name))[0]
                if tensor.allocation is not None:
                    cuda.memcpy_dtoh_async(tensor.host[:rows], tensor.device, self._stream)
                outputs[tensor.name] = tensor.host[:rows]
        finally:
            self._stream.synchronize()
        if not queued:
            raise InferenceError(f"{self.plan.name}: execute_async_v3 failed: {'; '.join(self._logger.errors)}")
        return outputs

    def _release(self) -> None:
        """Free buffers, engine and context, with the context current (TensorRT objects free GPU memory). Each step
        is best-effort: one that raises is logged and the others still run."""

        def attempt(step: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:
                log.warning("tensorrt_release_failed", plan=self.plan.name, step=step, error=str(exc))

        for tensor in self._tensors:
            if tensor.allocation is not None:
                attempt(f"free {tensor.name}", tensor.allocation.free)
            attempt(f"free host {tensor.name}", cast(_HostAllocation, tensor.host.base).free)
        self._tensors = []
        for attribute in ("_exec", "_engine", "_runtime", "_stream"):
            if hasattr(self, attribute):
                attempt(f"delete {attribute}", partial(delattr, self, attribute))
        if self._context is not None:
            attempt("pop the context", cuda.Context.pop)
            attempt("detach the context", self._context.detach)
            self._context = None
        self._fail_queued()
