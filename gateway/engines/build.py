"""ONNX -> TensorRT plan with the TensorRT 10 builder (typed against TensorRT's published stubs).

FP16 by default; FP32 on request; INT8 only by explicit quantization: the ONNX given is then a QDQ model made
by ``gateway.engines.quantize`` (TensorRT's implicit INT8 calibrators are deprecated). One optimization
profile covers batch 1..max_batch (optimum 1: photos mostly come one at a time). The timing cache is loaded
before and saved after every build, so rebuilding on the same GPU is fast. Progress goes through
``IProgressMonitor`` to ``BuildProgress``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
import tensorrt as trt

from gateway.engines.cache import write_atomic
from gateway.progress import BuildProgress
from gateway.runtimes.tensorrt import Logger

log = structlog.get_logger(__name__)


class BuildError(RuntimeError):
    """The builder refused; the message carries TensorRT's errors."""


RESERVE = 768 << 20
"""Memory left to the gateway (serving meanwhile) and the system when sizing a build's memory pools."""
LEAST = 256 << 20
"""Below this much to build with, a build is not tried (it would only push the box into the OOM killer)."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    """fp16, fp32, or int8 (the ONNX must then be a QDQ model)."""
    max_batch: int = 4
    workspace_mb: int = 1024
    """The workspace's upper limit; less when memory is short (``pool_limits``)."""
    available: int | None = None
    """Bytes available to the build (``gateway.runtimes.tensorrt.available_memory``); None: TensorRT's defaults."""


def pool_limits(options: BuildOptions) -> tuple[int, int | None]:
    """(WORKSPACE, TACTIC_DRAM) limits in bytes, from the memory available less ``RESERVE``: tactics may use 3/4 of
    it (TensorRT's own default is 3/4 of the device's total on a Jetson, whatever else runs), a layer's workspace
    1/4, at most ``workspace_mb``. Raises BuildError when too little is left."""
    cap = options.workspace_mb << 20
    if options.available is None:
        return cap, None
    budget = options.available - RESERVE
    if budget < LEAST:
        raise BuildError(
            f"only {options.available >> 20} MiB of memory available; a build needs {(LEAST + RESERVE) >> 20} MiB"
            " (the gateway keeps serving meanwhile)"
        )
    return min(cap, budget // 4), budget * 3 // 4


class _Monitor(trt.IProgressMonitor):
    """TensorRT's progress callbacks -> BuildProgress (never raising into TensorRT)."""

    def __init__(self, progress: BuildProgress) -> None:
        trt.IProgressMonitor.__init__(self)
        self._progress = progress

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        try:
            self._progress.phase_start(phase_name, parent_phase, num_steps)
        except Exception:
            log.exception("progress_failed")

    def step_complete(self, phase_name: str, step: int) -> bool:
        try:
            return self._progress.step_complete(phase_name, step)
        except Exception:
            log.exception("progress_failed")
            return True

    def phase_finish(self, phase_name: str) -> None:
        try:
            self._progress.phase_finish(phase_name)
        except Exception:
            log.exception("progress_failed")


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


def _parse(builder: trt.Builder, onnx: Path, logger: Logger) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """The network and its parser (keep the parser alive until the build ends: it owns the weights)."""
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"{onnx.name}: the ONNX parser failed: {'; '.join(errors) or 'no reason given'}")
    return network, parser


def _profile(builder: trt.Builder, network: trt.INetworkDefinition, max_batch: int) -> trt.IOptimizationProfile:
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = _dims(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise BuildError(f"input {tensor.name!r} {list(shape)}: only the batch dimension may be dynamic")
        if shape[0] >= 0:
            log.warning("static_batch", input=tensor.name, batch=shape[0], note="the ONNX fixes the batch")
            profile.set_shape(tensor.name, trt.Dims(list(shape)), trt.Dims(list(shape)), trt.Dims(list(shape)))
            continue
        rest = list(shape[1:])
        profile.set_shape(tensor.name, trt.Dims([1, *rest]), trt.Dims([1, *rest]), trt.Dims([max_batch, *rest]))
    return profile


def build_plan(onnx: Path, timing_cache: Path, options: BuildOptions, progress: BuildProgress) -> bytes:
    """Build and return a serialized plan; the timing cache file is read and updated."""
    workspace, tactics = pool_limits(options)  # before anything is allocated
    logger = Logger(trt.ILogger.Severity.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(builder, onnx, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if tactics is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.TACTIC_DRAM, tactics)
    log.info("engine_build_memory", workspace_mb=workspace >> 20, tactic_dram_mb=tactics and tactics >> 20)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # allows FP16 kernels; TensorRT still picks the fastest
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # with a QDQ network: explicit quantization, no calibrator
    config.add_optimization_profile(_profile(builder, network, options.max_batch))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, False):
        log.warning("timing_cache_mismatch", path=str(timing_cache), note="starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), True)
    monitor = _Monitor(progress)
    config.progress_monitor = monitor
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        progress.close()
        try:  # also after a failed or cancelled build: the tactics timed so far are not timed again
            write_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
        except Exception as exc:
            log.warning("timing_cache_not_saved", path=str(timing_cache), error=str(exc))
    if serialized is None:
        if progress.cancelled:
            raise BuildError(f"{onnx.name}: build cancelled")
        raise BuildError(f"{onnx.name}: TensorRT could not build it: {'; '.join(logger.errors) or 'no reason given'}")
    return bytes(memoryview(serialized))
