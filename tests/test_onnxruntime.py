"""The ONNX Runtime backend on the CPU, with small ONNX graphs built here: runtime, decoding, the whole gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway import __version__
from gateway.backends.neural import ClassifierFocus, RetinaNetDetector, neural_backend, open_runtimes
from gateway.backends.settings import ModelsConfig
from gateway.config import GatewayConfig, parse_config
from gateway.engines.provider import TensorRTEngines
from gateway.focus_measures import FOCUS_V1, focus_v1
from gateway.judge import PhotoRequest, build_judge
from gateway.models.manifest import ManifestError, load_manifest
from gateway.runtimes.onnxruntime import OnnxRuntime, choose_providers, probe
from gateway.runtimes.runtime import InferenceError
from gateway.scenes import SceneSpec, render
from tests.onnx_models import (
    DETECTOR_SCORE,
    classifier_entry,
    detector_and_classifier,
    fused_classifier,
    mean_classifier,
    typed_classifier,
    typed_entry,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]
# The classifier's constant logits [0, 1]: softmax sharp e/(1+e) = 0.7311; threshold 0.6 -> 0.6639
SHARP_P = 0.5 + 0.5 * (np.e / (1 + np.e) - 0.6) / 0.4
BOX = (0.25, 0.25, 1.0, 0.75)  # the hand-computed detector box [8, 8, 32, 24] of a 32x32 input, stretched


def photo(width: int = 320, height: int = 240, value: int = 128) -> np.ndarray:
    image = np.full((height, width, 3), value, dtype=np.uint8)
    cv2.circle(image, (width // 2, height // 2), height // 3, (90, 110, 200), -1)
    return image


def test_probe_and_providers() -> None:
    available, why = probe()
    assert available and why.startswith("onnxruntime ") and "CPUExecutionProvider" in why
    assert choose_providers([], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers([], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(["TensorrtExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_onnxruntimes_tensorrt_provider_only_when_named() -> None:
    """Its own engine build on the first photo (minutes, uncached) must not happen behind the gateway's back."""
    jetson = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([], jetson) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"], jetson) == jetson


def test_runtime_reports_tensors_and_runs_a_batch(tmp_path: Path) -> None:
    detector_and_classifier(tmp_path)
    runtime = OnnxRuntime(tmp_path / "classifier.onnx")
    assert runtime.engine == "onnxruntime" and runtime.providers == ("CPUExecutionProvider",)
    assert [(t.name, t.shape, t.dtype) for t in runtime.inputs] == [("crops", (None, 3, 16, 16), "float32")]
    assert [(t.name, t.shape) for t in runtime.outputs] == [("logits", (None, 2))]
    out = runtime.run({"crops": np.zeros((3, 3, 16, 16), dtype=np.float32)})
    np.testing.assert_allclose(out["logits"], [[0, 1]] * 3)


def test_the_model_really_runs_on_the_input(tmp_path: Path) -> None:
    mean_classifier(tmp_path / "m.onnx", 16, gain=2.0, bias=0.5)
    runtime = OnnxRuntime(tmp_path / "m.onnx")
    x = np.full((2, 3, 16, 16), 0.25, dtype=np.float32)
    x[1] = -1.0
    np.testing.assert_allclose(runtime.run({"crops": x})["logits"], [[0, 1.0], [0, -1.5]], atol=1e-6)


def test_the_memory_arena_is_off_unless_configured(tmp_path: Path) -> None:
    """The arena only grows (gateway/runtimes/onnxruntime.py); the config's switch reaches the session."""
    mean_classifier(tmp_path / "m.onnx", 16, gain=1.0, bias=0.0)
    x = np.zeros((1, 3, 16, 16), dtype=np.float32)
    for arena in (False, True):
        runtime = OnnxRuntime(tmp_path / "m.onnx", memory_arena=arena)
        assert runtime._session.get_session_options().enable_cpu_mem_arena is arena
        np.testing.assert_allclose(runtime.run({"crops": x})["logits"], [[0, 0]], atol=1e-6)
    assert GatewayConfig().models.onnxruntime_memory_arena is False


def test_broken_files_and_bad_inputs_raise_inference_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(InferenceError, match="ONNX Runtime cannot load"):
        OnnxRuntime(tmp_path / "bad.onnx")
    mean_classifier(tmp_path / "m.onnx", 16, 1, 0)
    with pytest.raises(InferenceError, match=r"ONNX Runtime failed on m\.onnx"):
        OnnxRuntime(tmp_path / "m.onnx").run({"crops": np.zeros((1, 3, 8, 8), dtype=np.float32)})


def test_detector_and_classifier_decode_through_onnxruntime(tmp_path: Path) -> None:
    manifest = load_manifest(detector_and_classifier(tmp_path))
    runtimes = open_runtimes(manifest, lambda spec: OnnxRuntime(manifest.onnx_path(spec)))
    detector = RetinaNetDetector(manifest.models[0], runtimes["cervix-detector"])
    found = detector.locate(photo(64, 48))
    assert found.found and found.score == pytest.approx(DETECTOR_SCORE, abs=1e-6)
    assert found.box == pytest.approx(BOX, abs=1e-6)
    focus = ClassifierFocus(manifest.models[1], runtimes["focus-classifier"]).judge(photo(), found.box)
    assert focus.sharp_probability == pytest.approx(SHARP_P, abs=1e-6)
    assert focus.blur_type is None  # a model of today's form gives no type: the pipeline measures it classically


def test_a_fused_model_gets_the_classical_measures_of_the_same_cervix(tmp_path: Path) -> None:
    """The sharp logit is a weighted sum of the focus-v1 measures: the judge must feed those of this photo's box."""
    weights = np.zeros(len(FOCUS_V1), np.float32)
    weights[FOCUS_V1.index("band_0.5_1")] = 1.0
    weights[FOCUS_V1.index("ratio_0.5_1")] = 2.0
    fused = fused_classifier(tmp_path / "fused.onnx", 16, weights, -3.0)
    measures = {"name": "measures", "set": "focus-v1", "count": len(FOCUS_V1)}
    manifest = load_manifest(write_manifest(tmp_path, [classifier_entry(fused, threshold=0.5, measures=measures)]))
    spec = manifest.models[0]
    runtimes = open_runtimes(manifest, lambda s: OnnxRuntime(manifest.onnx_path(s)))
    judge = ClassifierFocus(spec, runtimes[spec.name])
    probabilities = []
    for blur, px in (("none", 0.0), ("defocus", 6.0)):
        scene = render(SceneSpec(960, 720, seed=2, blur=blur, blur_px=px))
        assert scene.cervix_box is not None
        logit = float(focus_v1(scene.image, scene.cervix_box) @ weights) - 3.0
        found = judge.judge(scene.image, scene.cervix_box)
        assert found.measure == pytest.approx(1.0 / (1.0 + np.exp(-logit)), abs=1e-5)
        probabilities.append(found.sharp_probability)
    assert probabilities[0] > 0.9 and probabilities[1] < 0.1, probabilities


def typed_judge(tmp_path: Path, motion_bias: float, **changes: object) -> ClassifierFocus:
    """A focus classifier whose sharp logit is 1 (sharp) and whose blur-type logits are [0, motion_bias]."""
    typed = typed_classifier(tmp_path / "typed.onnx", 16, 1.0, motion_bias)
    manifest = load_manifest(write_manifest(tmp_path, [typed_entry(typed, **changes)]))
    spec = manifest.models[0]
    return ClassifierFocus(spec, open_runtimes(manifest, lambda s: OnnxRuntime(manifest.onnx_path(s)))[spec.name])


@pytest.mark.parametrize(
    ("motion_bias", "changes", "kind"),
    [
        (3.0, {}, "motion"),  # motion probability 0.953
        (-3.0, {}, "defocus"),  # 0.047
        (0.5, {}, "motion"),  # 0.622 at the default threshold 0.5
        (0.5, {"motion_threshold": 0.7}, "defocus"),  # 0.622 under 0.7
        (1.0, {"motion_threshold": 0.7}, "motion"),  # 0.731
    ],
)
def test_a_blur_type_output_gives_the_blur_type_of_every_photo(
    tmp_path: Path, motion_bias: float, changes: dict[str, object], kind: str
) -> None:
    found = typed_judge(tmp_path, motion_bias, **changes).judge(photo(), BOX)
    assert found.sharp_probability == pytest.approx(SHARP_P, abs=1e-6)  # the sharp logit as before
    assert found.blur_type == kind


@pytest.mark.parametrize(("motion_bias", "kind"), [(3.0, "motion"), (-3.0, "defocus")])
def test_the_pipeline_keeps_the_models_blur_type(tmp_path: Path, motion_bias: float, kind: str) -> None:
    """A blurred photo under the borderline band: the classical type is measured only when the model gave none."""
    from gateway.backends.classical import ClassicalDetector
    from gateway.decode import DecodedImage
    from gateway.pipeline import Pipeline

    config = parse_config("")
    typed = typed_classifier(tmp_path / "typed.onnx", 16, -3.0, motion_bias)
    manifest = load_manifest(write_manifest(tmp_path, [typed_entry(typed)]))
    runtimes = open_runtimes(manifest, lambda s: OnnxRuntime(manifest.onnx_path(s)))
    backend = neural_backend("onnxruntime", manifest, runtimes, config.classical)
    assert isinstance(backend.detector, ClassicalDetector)
    pipeline = Pipeline(backend, config.exposure)
    for blur in ("motion", "defocus"):  # whatever the photo's real blur, the model's type is what comes back
        scene = render(SceneSpec(960, 720, seed=3, blur=blur, blur_px=12.0))
        focus = pipeline.assess(DecodedImage(scene.image, 960, 720, 1, "png")).focus
        assert focus.sharp_probability < 0.4 and focus.blur_type == kind


def test_a_model_that_does_not_match_its_spec_is_refused(tmp_path: Path) -> None:
    path = detector_and_classifier(tmp_path)
    mean_classifier(tmp_path / "classifier.onnx", 16, 0, 1, input_name="pixels")  # same file name, new input
    text = path.read_text()
    import hashlib

    digest = hashlib.sha256((tmp_path / "classifier.onnx").read_bytes()).hexdigest()
    lines = text.splitlines()
    sha_lines = [i for i, line in enumerate(lines) if line.strip().startswith("sha256:")]
    lines[sha_lines[1]] = lines[sha_lines[1]].split("sha256:")[0] + f"sha256: {digest}"
    path.write_text("\n".join(lines) + "\n")
    manifest = load_manifest(path)
    with pytest.raises(ManifestError, match="focus-classifier: no input named 'crops'; the model has \\['pixels'\\]"):
        open_runtimes(manifest, lambda spec: OnnxRuntime(manifest.onnx_path(spec)))


def test_missing_parts_fall_back_to_classical(tmp_path: Path) -> None:
    manifest = load_manifest(detector_and_classifier(tmp_path))
    only_detector = manifest.model_copy(update={"models": manifest.models[:1]})
    runtimes = open_runtimes(only_detector, lambda spec: OnnxRuntime(manifest.onnx_path(spec)))
    config = parse_config("")
    backend = neural_backend("onnxruntime", only_detector, runtimes, config.classical)
    assert dict(backend.models) == {"cervix-detector": "0.0.1", "classical": __version__}


def config_for(tmp_path: Path, backend: str = "onnxruntime") -> str:
    manifest = detector_and_classifier(tmp_path / "models")
    return f"backend: {backend}\nmodels:\n  manifest: {manifest}\n  engine_cache_dir: {tmp_path / 'cache'}\n"


def test_the_gateway_judges_through_onnxruntime(tmp_path: Path) -> None:
    """End to end without a broker: the judge the service uses, on a JPEG, reports backend onnxruntime."""
    judge = build_judge(parse_config(config_for(tmp_path), "test.yaml"))
    payload = cv2.imencode(".jpg", photo(320, 240))[1].tobytes()
    verdict = judge.judge(PhotoRequest("clinic-a", "eva-1", "IMG-1", payload, in_run=False)).verdict
    assert verdict.backend == "onnxruntime"
    assert verdict.models == {"cervix-detector": "0.0.1", "focus-classifier": "0.0.2"}
    assert verdict.cervix is not None and verdict.cervix.found
    assert verdict.cervix.box == pytest.approx(BOX, abs=1e-3)
    assert verdict.cervix.score == pytest.approx(DETECTOR_SCORE, abs=1e-3)
    assert verdict.focus is not None and verdict.focus.sharp_probability == pytest.approx(SHARP_P, abs=1e-3)
    assert verdict.focus.label == "sharp"


def test_auto_without_tensorrt_runs_onnxruntime_from_the_command_line(tmp_path: Path) -> None:
    """`colpo-gateway check --json` with backend: auto on a machine without TensorRT: ONNX Runtime."""
    target, _ = TensorRTEngines(ModelsConfig()).probe()
    if target is not None:
        pytest.skip("TensorRT is usable here: auto picks it (tests/test_tensorrt.py)")
    (tmp_path / "gateway.yaml").write_text(config_for(tmp_path, "auto"))
    image = tmp_path / "photo.jpg"
    cv2.imwrite(str(image), photo())
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--json", "--config", str(tmp_path / "gateway.yaml"), str(image)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["backend"] == "onnxruntime"
    assert verdict["cervix"]["box"] == pytest.approx(list(BOX), abs=1e-3)
    assert "backend_selected" in result.stderr and "TensorRT unavailable" in result.stderr
