"""Which backend runs, and why: ``auto`` picks TensorRT when it imports and a GPU answers, else ONNX Runtime
(when the manifest has models), else classical.

TensorRT needs a plan built for this TensorRT and GPU. When one is missing or stale (it does not deserialize), the
gateway serves through ONNX Runtime at once and builds the plans in the background; when they are ready it
switches over. If building fails it stays on ONNX Runtime and the slot says ``degraded``: a bad engine never
makes the service exit (no crash loop under systemd). Plans that deserialize but do not open (no execution
context: out of memory) are kept, and ONNX Runtime serves, ``degraded``. An explicitly configured backend that
cannot run gives the next best one, also ``degraded``. TensorRT that fails ``FAILOVER_AFTER`` inferences in a
row (a sticky CUDA error) is replaced by ONNX Runtime, ``degraded``, until the next start. The choice and its
reason are logged and kept in the ``BackendSlot``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from gateway import __version__
from gateway.backends.base import Backend
from gateway.backends.classical import ClassicalDetector, ClassicalFocus
from gateway.backends.neural import neural_backend, open_runtimes
from gateway.backends.slot import BackendSlot
from gateway.config import GatewayConfig
from gateway.engines.cache import Target
from gateway.models.manifest import Manifest, ManifestError, ModelSpec, load_manifest
from gateway.runtimes import onnxruntime as ort_backend
from gateway.runtimes.batching import BatchListeners, batched
from gateway.runtimes.failover import FailureCount, Watched
from gateway.runtimes.runtime import InferenceError, PlanError, Runtime

log = structlog.get_logger(__name__)

FAILOVER_AFTER = 3
"""Consecutive TensorRT inference failures after which the gateway serves through ONNX Runtime until restart."""


class EngineProvider(Protocol):
    """The TensorRT side (``gateway.engines.provider.TensorRTEngines``; tests substitute their own)."""

    def probe(self) -> tuple[Target | None, str]: ...

    def cached_plan(self, spec: ModelSpec, target: Target) -> Path | None: ...

    def open(self, plan: Path) -> Runtime: ...

    def discard(self, plan: Path) -> None: ...

    def build(self, manifest: Path, models: Sequence[str]) -> None: ...

    def cancel(self) -> None: ...


OnnxFactory = Callable[[ModelSpec, Path], Runtime]
"""Opens one model's ONNX file (spec, path) with ONNX Runtime."""


def classical_backend(config: GatewayConfig) -> Backend:
    return Backend(
        name="classical",
        models={"classical": __version__},
        detector=ClassicalDetector(config.classical),
        focus=ClassicalFocus(config.classical),
    )


def _default_engines(config: GatewayConfig) -> EngineProvider:
    from gateway.engines.provider import TensorRTEngines

    return TensorRTEngines(config.models)


def _default_onnx(config: GatewayConfig) -> OnnxFactory:
    models = config.models

    def open_onnx(_spec: ModelSpec, path: Path) -> Runtime:
        return ort_backend.OnnxRuntime(
            path, models.onnxruntime_providers, models.onnxruntime_threads, models.onnxruntime_memory_arena
        )

    return open_onnx


class _Selector:
    def __init__(self, config: GatewayConfig, engines: EngineProvider | None, onnx: OnnxFactory | None) -> None:
        self.config = config
        self._engines = engines
        self._onnx = onnx or _default_onnx(config)
        self.classical = classical_backend(config)
        self.batches = BatchListeners()
        """Every batcher opened here reports to this; the slot hands it to its subscribers."""
        self.start_build: Callable[[], None] | None = None
        """Starts the background build (after the choice is logged), when one is needed."""
        self.slot: BackendSlot | None = None

    def engines(self) -> EngineProvider:
        if self._engines is None:
            self._engines = _default_engines(self.config)
        return self._engines

    def select(self) -> BackendSlot:
        requested = self.config.backend
        if requested == "classical":
            return BackendSlot(self.classical, "backend: classical in the config")
        path = self.config.models.manifest_path()
        if not path.is_file():
            return self._fallback(f"no model manifest at {path} (models.manifest)", degraded=True)
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            return self._fallback(f"the model manifest is invalid: {'; '.join(exc.problems)}", degraded=True)
        if not manifest.models:
            return self._fallback(f"{path} lists no models", degraded=requested != "auto")
        if requested == "onnxruntime":
            return self._onnxruntime(manifest, "backend: onnxruntime in the config", degraded=False)
        target, why = self.engines().probe()
        if target is None:
            note = f"TensorRT unavailable: {why}"
            return self._onnxruntime(manifest, note, degraded=requested == "tensorrt")
        return self._tensorrt(manifest, path, target, why)

    def _fallback(self, why: str, degraded: bool) -> BackendSlot:
        return BackendSlot(self.classical, f"{why}: classical", "degraded" if degraded else "online")

    def _open_onnx(self, manifest: Manifest) -> Backend:
        runtimes = open_runtimes(manifest, lambda spec: self._onnx(spec, manifest.onnx_path(spec)))
        return neural_backend(ort_backend.ENGINE, manifest, self._batched(runtimes), self.config.classical)

    def _batched(self, runtimes: dict[str, Runtime]) -> dict[str, Runtime]:
        models = self.config.models
        return {
            name: batched(rt, models.max_batch, models.batch_wait_ms, self.batches.reporter(name))
            for name, rt in runtimes.items()
        }

    def _interim(self, manifest: Manifest) -> tuple[Backend, str | None, bool]:
        """ONNX Runtime if it runs the manifest here, else classical, why not, and whether a model is broken."""
        available, why = ort_backend.probe()
        if not available:
            return self.classical, why, False
        try:
            return self._open_onnx(manifest), None, False
        except (ManifestError, InferenceError) as exc:
            return self.classical, f"ONNX Runtime cannot run the models: {exc}", True

    def _onnxruntime(self, manifest: Manifest, context: str, degraded: bool) -> BackendSlot:
        """ONNX Runtime; else classical, degraded unless ``auto`` allows that (no ONNX Runtime installed)."""
        backend, problem, broken = self._interim(manifest)
        if problem is not None:
            degraded = degraded or broken or self.config.backend != "auto"
            return BackendSlot(backend, f"{context}; {problem}: classical", "degraded" if degraded else "online")
        return BackendSlot(backend, f"{context}: ONNX Runtime", "degraded" if degraded else "online")

    def _open_tensorrt(self, manifest: Manifest, plans: dict[str, Path]) -> Backend:
        failures = FailureCount(FAILOVER_AFTER, lambda error: self._fail_over(manifest, error))
        runtimes = open_runtimes(
            manifest, lambda spec: Watched(self.engines().open(plans[spec.name]), failures, spec.name)
        )
        return neural_backend("tensorrt", manifest, self._batched(runtimes), self.config.classical)

    def _fail_over(self, manifest: Manifest, error: str) -> None:
        """TensorRT keeps failing: switch to ONNX Runtime (else classical), degraded, on a thread of its own."""

        def switch() -> None:
            slot = self.slot
            if slot is None:
                return
            interim, problem, _ = self._interim(manifest)
            serving = interim.name if problem is None else f"classical ({problem})"
            failed = f"TensorRT failed {FAILOVER_AFTER} inferences in a row ({error})"
            slot.swap(interim, f"{failed}; serving through {serving} until restart", "degraded")

        threading.Thread(target=switch, name="tensorrt-failover", daemon=True).start()

    def _tensorrt(self, manifest: Manifest, path: Path, target: Target, why: str) -> BackendSlot:
        engines = self.engines()
        found = {spec.name: engines.cached_plan(spec, target) for spec in manifest.models}
        plans = {name: plan for name, plan in found.items() if plan is not None}
        missing = [name for name, plan in found.items() if plan is None]
        problem = "not built yet"
        failure: InferenceError | None = None
        if not missing:
            try:
                return BackendSlot(self._open_tensorrt(manifest, plans), f"{why}: cached engines")
            except (PlanError, ManifestError) as exc:  # another TensorRT or GPU, or damaged: rebuild
                log.warning("engines_stale", error=str(exc))
                for plan in plans.values():
                    engines.discard(plan)
                missing, problem = list(found), f"stale ({exc})"
            except InferenceError as exc:  # e.g. no execution context (out of memory): the plans are kept
                failure = exc
        interim, interim_problem, _ = self._interim(manifest)
        serving = interim.name if interim_problem is None else f"classical ({interim_problem})"
        if failure is not None:
            log.warning("engines_not_opened", error=str(failure))
            reason = f"{why}: the cached engines do not open ({failure}); serving through {serving}"
            return BackendSlot(interim, reason, "degraded")
        reason = f"{why}: engines for {', '.join(missing)} {problem}; serving through {serving}"
        if not self.config.models.build_in_background:
            note = "background builds are off: run colpo-gateway engines build"
            return BackendSlot(interim, f"{reason}; {note}", "degraded")
        slot = BackendSlot(interim, f"{reason} while they build")
        slot.begin_task(engines.cancel)
        thread = threading.Thread(
            target=self._build, args=(slot, manifest, path, target, why, missing), name="engine-build", daemon=True
        )
        self.start_build = thread.start
        return slot

    def _build(
        self, slot: BackendSlot, manifest: Manifest, path: Path, target: Target, why: str, missing: list[str]
    ) -> None:
        engines = self.engines()
        try:
            engines.build(path, missing)
            found = {spec.name: engines.cached_plan(spec, target) for spec in manifest.models}
            absent = [name for name, plan in found.items() if plan is None]
            if absent:
                raise InferenceError(f"the build left no plan for {', '.join(absent)}")
            plans = {name: plan for name, plan in found.items() if plan is not None}
            slot.swap(self._open_tensorrt(manifest, plans), f"{why}: engines built")
        except Exception as exc:
            slot.degrade(f"building TensorRT engines failed ({exc}); staying on {slot.current.name}")
        finally:
            slot.end_task()


def select_backend(
    config: GatewayConfig, engines: EngineProvider | None = None, onnx: OnnxFactory | None = None
) -> BackendSlot:
    """The backend the config asks for, in a slot that a background engine build may switch over later."""
    selector = _Selector(config, engines, onnx)
    slot = selector.slot = selector.select()
    slot.batches = selector.batches
    log_choice = log.info if slot.state == "online" else log.warning
    log_choice(
        "backend_selected",
        requested=config.backend,
        backend=slot.current.name,
        models=dict(slot.current.models),
        state=slot.state,
        reason=slot.reason,
    )
    if selector.start_build is not None:
        selector.start_build()
    return slot
