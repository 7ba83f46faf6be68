"""``colpo-gateway engines build`` and ``engines quantize``: what the commands do, given a validated config."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gateway.config import GatewayConfig
from gateway.engines.cache import EngineCache, Target, write_atomic
from gateway.engines.provider import TensorRTEngines
from gateway.engines.quantize import QuantizeError, quantize_qdq
from gateway.engines.reference import check, load_reference, reference_path
from gateway.models.manifest import Manifest, ManifestError, ModelSpec, check_signature, load_manifest
from gateway.progress import BuildProgress
from gateway.runtimes.runtime import shapes


def _manifest(config: GatewayConfig, names: Sequence[str]) -> tuple[Manifest, list[ModelSpec]] | None:
    path = config.models.manifest_path()
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        print("manifest problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return None
    unknown = sorted(set(names) - {m.name for m in manifest.models})
    if unknown:
        print(f"{path}: no model named {', '.join(unknown)}", file=sys.stderr)
        return None
    return manifest, [m for m in manifest.models if not names or m.name in names]


def _qdq(config: GatewayConfig, manifest: Manifest, spec: ModelSpec, cache: EngineCache, force: bool) -> Path:
    """The QDQ ONNX of ``spec`` (made now if missing); raises QuantizeError."""
    target = cache.qdq_path(spec)
    if target.is_file() and not force:
        return target
    calibration = config.models.calibration_dir
    if calibration is None:
        raise QuantizeError("INT8 needs calibration photos: --calibration DIR (or models.calibration_dir)")
    used = quantize_qdq(manifest.onnx_path(spec), target, spec, calibration)
    print(f"{spec.name}: quantized with {used} photos -> {target}")
    return target


def quantize(config: GatewayConfig, names: Sequence[str], force: bool) -> int:
    """Make the QDQ INT8 ONNX of each model (ONNX Runtime only: no GPU needed)."""
    found = _manifest(config, names)
    if found is None:
        return 1
    manifest, specs = found
    cache = EngineCache(config.models.cache_dir())
    failed = 0
    for spec in specs:
        try:
            path = _qdq(config, manifest, spec, cache, force)
            print(f"{spec.name}: {path}")
        except (QuantizeError, OSError, ValueError) as exc:
            print(f"{spec.name}: quantization failed: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def build(config: GatewayConfig, names: Sequence[str], force: bool) -> int:
    """Build (or confirm up to date) the TensorRT plan of each model for this TensorRT and GPU."""
    found = _manifest(config, names)
    if found is None:
        return 1
    manifest, specs = found
    if not specs:
        print(f"{config.models.manifest_path()} lists no models: nothing to build")
        return 0
    engines = TensorRTEngines(config.models)
    target, why = engines.probe()
    if target is None:
        print(f"cannot build TensorRT engines here: {why}", file=sys.stderr)
        return 1
    print(f"building for {why}; cache {engines.cache.root}")
    interrupted = threading.Event()
    building: list[BuildProgress] = []

    def interrupt(_sig: int, _frame: FrameType | None) -> None:
        """SIGINT (Ctrl-C, or the gateway cancelling): TensorRT stops at its next step; no further model starts."""
        interrupted.set()
        for progress in building:
            progress.cancel()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        failed = 0
        for spec in specs:
            if interrupted.is_set():
                print(f"{spec.name}: not built: interrupted", file=sys.stderr)
                failed += 1
                continue
            failed += not _guarded(config, manifest, spec, engines, target, force, building)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 1 if failed else 0


def _guarded(
    config: GatewayConfig,
    manifest: Manifest,
    spec: ModelSpec,
    engines: TensorRTEngines,
    target: Target,
    force: bool,
    building: list[BuildProgress],
) -> bool:
    """``_build_one``, where any exception (TensorRT raises its own types) fails this model only, in one line."""
    try:
        return _build_one(config, manifest, spec, engines, target, force, building)
    except Exception as exc:
        print(f"{spec.name}: build failed: {_why(exc)}", file=sys.stderr)
        return False


def _why(exc: Exception) -> str:
    from gateway.engines.build import BuildError

    return str(exc) if isinstance(exc, BuildError | QuantizeError | OSError) else f"{type(exc).__name__}: {exc}"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def _build_one(
    config: GatewayConfig,
    manifest: Manifest,
    spec: ModelSpec,
    engines: TensorRTEngines,
    target: Target,
    force: bool,
    building: list[BuildProgress],
) -> bool:
    from gateway.engines.build import BuildOptions, build_plan
    from gateway.runtimes.tensorrt import available_memory

    models, cache = config.models, engines.cache
    started = time.monotonic()
    with cache.lock():
        onnx = _qdq(config, manifest, spec, cache, False) if models.precision == "int8" else None
        key = engines.key(spec, target)  # after the QDQ file exists: an INT8 plan's key holds its sha256
        if not force and (existing := cache.find(key)) is not None:
            print(f"{spec.name}: up to date ({existing.name})")
            return True
        failure = cache.failure(key)
        if force:
            cache.clear_failure(key)
        elif failure is not None and failure.retry_at > time.time():
            print(
                f"{spec.name}: not rebuilt: {failure.count} failed build(s), the last: {failure.error}; next try after"
                f" {_when(failure.retry_at)} (engines build --force tries now)",
                file=sys.stderr,
            )
            return False
        try:
            progress = BuildProgress(spec.name)
            building[:] = [progress]
            available = available_memory(models.gpu)
            options = BuildOptions(models.precision, models.max_batch, models.workspace_mb, available)
            source = manifest.onnx_path(spec) if onnx is None else onnx
            plan = build_plan(source, cache.timing_cache_path(target), options, progress)
            print(f"{spec.name}: {_verify(manifest, spec, engines, cache.plan_path(key), plan)}")
        except Exception as exc:
            retry_at = cache.record_failure(key, _why(exc))
            print(
                f"{spec.name}: build failed: {_why(exc)}; not tried again before {_when(retry_at)}"
                " (engines build --force tries now)",
                file=sys.stderr,
            )
            return False
        finally:
            building.clear()
        path = cache.write_plan(key, plan)
        cache.clear_failure(key)
    size_mb = path.stat().st_size / 1e6
    print(f"{spec.name}: built {path.name} ({size_mb:.1f} MB) in {time.monotonic() - started:.0f} s")
    return True


def _verify(manifest: Manifest, spec: ModelSpec, engines: TensorRTEngines, final: Path, plan: bytes) -> str:
    """A new plan must load, match the manifest and reproduce the FP32 reference outputs shipped with the model
    before it goes into the cache (raises BuildError, InferenceError or ManifestError); it is opened from a
    temporary file beside its final place. Returns what was checked."""
    from gateway.engines.build import BuildError

    reference = load_reference(manifest, spec)  # ValueError: made from another ONNX file
    trial = final.with_name(f".trial-{final.name}")
    write_atomic(trial, plan)
    try:
        runtime = engines.open(trial)
        try:
            check_signature(spec, shapes(runtime.inputs), shapes(runtime.outputs))
            if reference is None:
                return f"no reference outputs shipped ({reference_path(manifest, spec).name}): not compared with FP32"
            problems = check(spec, reference, runtime, engines.config.max_batch)
        finally:
            runtime.close()
    finally:
        trial.unlink(missing_ok=True)
    if problems:
        raise BuildError(f"the new plan does not reproduce the FP32 reference: {'; '.join(problems[:4])}")
    return f"the new plan reproduces the FP32 reference ({len(reference.images)} rows, batch 1 and batches)"
