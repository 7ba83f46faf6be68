"""Backend selection: auto/tensorrt/onnxruntime/classical, background engine builds, switch-over, degraded."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.backends import select as select_module
from gateway.backends.select import select_backend
from gateway.backends.slot import BackendSlot
from gateway.config import GatewayConfig, parse_config
from gateway.engines.cache import Target
from gateway.judge import PhotoRequest, build_judge
from gateway.models.manifest import ModelSpec
from gateway.runtimes.onnxruntime import OnnxRuntime
from gateway.runtimes.runtime import PlanError, Runtime
from tests.onnx_models import detector_and_classifier, write_manifest

TARGET = Target("10.3.0", "Orin (nvgpu)", (8, 7))


class FakeEngines:
    """TensorRT stand-in: a 'plan' is a copy of the ONNX file, run by ONNX Runtime."""

    def __init__(self, cache: Path, target: Target | None = TARGET, fail: str | None = None) -> None:
        self.cache = cache
        self.target = target
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.built: list[list[str]] = []
        self.discarded: list[Path] = []
        self.unloadable: set[Path] = set()
        self.cancelled = False
        self.sources: dict[str, Path] = {}

    def probe(self) -> tuple[Target | None, str]:
        return (self.target, "TensorRT 10.3.0 on Orin") if self.target else (None, "No module named 'tensorrt'")

    def plan(self, name: str) -> Path:
        return self.cache / f"{name}.plan"

    def cached_plan(self, spec: ModelSpec, target: Target) -> Path | None:
        assert target == self.target
        self.sources[spec.name] = spec.onnx
        return self.plan(spec.name) if self.plan(spec.name).exists() else None

    def open(self, plan: Path) -> Runtime:
        if plan in self.unloadable:
            raise PlanError(f"{plan.name}: Version tag does not match")
        return OnnxRuntime(plan)

    def discard(self, plan: Path) -> None:
        self.discarded.append(plan)
        self.unloadable.discard(plan)
        plan.unlink()

    def build(self, manifest: Path, models: Sequence[str]) -> None:
        assert self.gate.wait(20)
        self.built.append(list(models))
        if self.fail:
            raise RuntimeError(self.fail)
        for name in models:
            shutil.copy(manifest.parent / self.sources[name], self.plan(name))

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return detector_and_classifier(tmp_path / "models")


def config(manifest: Path | None, backend: str = "auto", background: bool = True) -> GatewayConfig:
    models = f"  manifest: {manifest}\n" if manifest else ""
    return parse_config(f"backend: {backend}\nmodels:\n{models}  build_in_background: {str(background).lower()}\n")


def engines(tmp_path: Path, **kwargs: object) -> FakeEngines:
    (tmp_path / "cache").mkdir(exist_ok=True)
    return FakeEngines(tmp_path / "cache", **kwargs)  # type: ignore[arg-type]


def test_classical_when_configured(manifest: Path, tmp_path: Path) -> None:
    slot = select_backend(config(manifest, "classical"), engines(tmp_path))
    assert (slot.current.name, slot.state, slot.reason) == ("classical", "online", "backend: classical in the config")


def test_the_default_config_and_the_repository_manifest_give_onnxruntime() -> None:
    """The trained models of engines/ run through ONNX Runtime by default where TensorRT cannot."""
    from gateway.backends.settings import ModelsConfig
    from gateway.engines.provider import TensorRTEngines

    if TensorRTEngines(ModelsConfig()).probe()[0] is not None:
        pytest.skip("TensorRT is usable here: auto builds engines (tests/test_tensorrt.py)")
    slot = select_backend(parse_config(""))
    assert (slot.current.name, slot.state) == ("onnxruntime", "online")
    assert set(slot.current.models) == {"cervix-detector", "focus-classifier"}
    assert slot.reason.endswith(": ONNX Runtime")


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_no_manifest_gives_classical_degraded_with_the_reason(tmp_path: Path, backend: str) -> None:
    """A missing manifest is a mistake (a corrupt one already gave degraded): never a silent online."""
    slot = select_backend(config(tmp_path / "absent.yaml", backend), engines(tmp_path))
    assert (slot.current.name, slot.state) == ("classical", "degraded")
    assert slot.reason == f"no model manifest at {tmp_path / 'absent.yaml'} (models.manifest): classical"


def test_an_invalid_manifest_degrades_to_classical_and_says_why(tmp_path: Path, manifest: Path) -> None:
    (manifest.parent / "detector.onnx").write_bytes(b"tampered")
    slot = select_backend(config(manifest), engines(tmp_path))
    assert (slot.current.name, slot.state) == ("classical", "degraded")
    assert "the model manifest is invalid: cervix-detector: detector.onnx has sha256" in slot.reason


def test_auto_without_tensorrt_uses_onnxruntime(tmp_path: Path, manifest: Path) -> None:
    slot = select_backend(config(manifest), engines(tmp_path, target=None))
    assert (slot.current.name, slot.state) == ("onnxruntime", "online")
    assert slot.reason == "TensorRT unavailable: No module named 'tensorrt': ONNX Runtime"


def test_tensorrt_requested_but_unavailable_is_degraded(tmp_path: Path, manifest: Path) -> None:
    slot = select_backend(config(manifest, "tensorrt"), engines(tmp_path, target=None))
    assert (slot.current.name, slot.state) == ("onnxruntime", "degraded")


def test_onnxruntime_requested_never_probes_tensorrt(tmp_path: Path, manifest: Path) -> None:
    fake = engines(tmp_path)
    fake.probe = lambda: pytest.fail("probed TensorRT")  # type: ignore[method-assign]
    slot = select_backend(config(manifest, "onnxruntime"), fake)
    assert (slot.current.name, slot.state) == ("onnxruntime", "online")


def test_cached_engines_are_used_at_once(tmp_path: Path, manifest: Path) -> None:
    fake = engines(tmp_path)
    for name, onnx in (("cervix-detector", "detector.onnx"), ("focus-classifier", "classifier.onnx")):
        shutil.copy(manifest.parent / onnx, fake.plan(name))
    slot = select_backend(config(manifest), fake)
    assert (slot.current.name, slot.state) == ("tensorrt", "online")
    assert slot.reason == "TensorRT 10.3.0 on Orin: cached engines"
    assert fake.built == []


def test_missing_engines_build_in_the_background_then_switch_over(tmp_path: Path, manifest: Path) -> None:
    fake = engines(tmp_path)
    fake.gate.clear()
    changes: list[str] = []
    slot = select_backend(config(manifest), fake)
    slot.on_change(lambda s: changes.append(f"{s.current.name}/{s.state}"))
    assert (slot.current.name, slot.state) == ("onnxruntime", "online")
    assert slot.reason == (
        "TensorRT 10.3.0 on Orin: engines for cervix-detector, focus-classifier not built yet;"
        " serving through onnxruntime while they build"
    )
    assert not slot.wait_settled(0.2)  # still building
    fake.gate.set()
    assert slot.wait_settled(20)
    assert (slot.current.name, slot.state, changes) == ("tensorrt", "online", ["tensorrt/online"])
    assert slot.reason == "TensorRT 10.3.0 on Orin: engines built"
    assert fake.built == [["cervix-detector", "focus-classifier"]]


def test_a_failed_build_stays_on_onnxruntime_degraded(tmp_path: Path, manifest: Path) -> None:
    slot = select_backend(config(manifest), engines(tmp_path, fail="out of memory"))
    assert slot.wait_settled(20)
    assert (slot.current.name, slot.state) == ("onnxruntime", "degraded")
    assert slot.reason == "building TensorRT engines failed (out of memory); staying on onnxruntime"


def test_a_stale_plan_is_discarded_and_rebuilt(tmp_path: Path, manifest: Path) -> None:
    fake = engines(tmp_path)
    for name, onnx in (("cervix-detector", "detector.onnx"), ("focus-classifier", "classifier.onnx")):
        shutil.copy(manifest.parent / onnx, fake.plan(name))
    fake.unloadable.add(fake.plan("focus-classifier"))
    fake.gate.clear()
    slot = select_backend(config(manifest), fake)
    assert slot.current.name == "onnxruntime" and "stale (focus-classifier.plan: Version tag does not match)" in (
        slot.reason
    )
    fake.gate.set()
    assert slot.wait_settled(20)
    assert (slot.current.name, slot.state) == ("tensorrt", "online")
    assert sorted(p.name for p in fake.discarded) == ["cervix-detector.plan", "focus-classifier.plan"]


def test_no_background_build_when_turned_off(tmp_path: Path, manifest: Path) -> None:
    fake = engines(tmp_path)
    slot = select_backend(config(manifest, background=False), fake)
    assert (slot.current.name, slot.state) == ("onnxruntime", "degraded")
    assert slot.reason.endswith("background builds are off: run colpo-gateway engines build")
    assert slot.wait_settled(0) and fake.built == []


@pytest.mark.parametrize(("backend", "state"), [("auto", "online"), ("onnxruntime", "degraded")])
def test_without_onnxruntime_classical(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch, backend: str, state: str
) -> None:
    monkeypatch.setattr(select_module.ort_backend, "probe", lambda: (False, "onnxruntime is not installed"))
    slot = select_backend(config(manifest, backend), engines(tmp_path, target=None))
    assert (slot.current.name, slot.state) == ("classical", state)
    assert "onnxruntime is not installed: classical" in slot.reason


def test_closing_cancels_a_running_build(tmp_path: Path, manifest: Path) -> None:
    fake = engines(tmp_path, fail="cancelled")
    fake.gate.clear()
    slot = select_backend(config(manifest), fake)
    slot.close()
    fake.gate.set()
    assert fake.cancelled and slot.wait_settled(20) and slot.state == "degraded"


def test_verdicts_name_the_backend_that_judged_them(tmp_path: Path, manifest: Path) -> None:
    judge = build_judge(config(manifest, "onnxruntime"))
    payload = cv2.imencode(".png", np.full((120, 160, 3), 128, dtype=np.uint8))[1].tobytes()
    assert judge.judge(PhotoRequest("s", "d", "i", payload, in_run=False)).verdict.backend == "onnxruntime"
    slot: BackendSlot = judge.pipeline.slot
    classical = select_module.classical_backend(config(None))
    slot.swap(classical, "test")
    assert judge.pipeline.backend is classical
    assert judge.judge(PhotoRequest("s", "d", "i", payload, in_run=False)).verdict.backend == "classical"


def test_write_manifest_helper_gives_an_empty_manifest(tmp_path: Path) -> None:
    slot = select_backend(config(write_manifest(tmp_path, []), "onnxruntime"), engines(tmp_path))
    assert (slot.current.name, slot.state) == ("classical", "degraded")


def test_a_model_that_does_not_match_its_spec_degrades_even_auto(tmp_path: Path) -> None:
    from tests.onnx_models import classifier_entry, mean_classifier

    onnx = mean_classifier(tmp_path / "c.onnx", 16, 0, 1)
    entry = classifier_entry(onnx, input={"name": "pixels", "shape": [-1, 3, 16, 16], "resize": "stretch"})
    slot = select_backend(config(write_manifest(tmp_path, [entry])), engines(tmp_path, target=None))
    assert (slot.current.name, slot.state) == ("classical", "degraded")
    assert "focus-classifier: no input named 'pixels'; the model has ['crops']" in slot.reason
