"""``colpo-gateway doctor`` tells the truth: backends, manifest, engines, broker."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from gateway.config import parse_config
from gateway.doctor import broker_check, run_doctor
from gateway.engines.cache import EngineCache, PlanKey, Target
from gateway.models.manifest import load_manifest
from tests.conftest import Broker, free_port
from tests.onnx_models import detector_and_classifier

REPO = Path(__file__).resolve().parents[1]
ORIN = Target("10.3.0.30", "Orin (nvgpu)", (8, 7))


def doctor(text: str, trt: tuple[Target | None, str] = (None, "tensorrt is not installed")) -> tuple[int, str]:
    out = io.StringIO()
    code = run_doctor(parse_config(text), out, tensorrt=lambda: trt)
    return code, out.getvalue()


def test_healthy_onnxruntime_gateway(tmp_path: Path, broker: Broker) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    code, report = doctor(f"broker: {{url: '{broker.url}'}}\nmodels: {{manifest: '{manifest}'}}\n")
    assert code == 0, report
    assert "cervix-detector 0.0.1 (cervix_detector, detector.onnx): sha256 ok" in report
    assert "onnxruntime  yes  onnxruntime " in report and "all 2 models load and match the manifest" in report
    assert "tensorrt     no   tensorrt is not installed" in report
    assert "backend: auto -> onnxruntime" in report
    assert "reachable: CONNACK Success" in report and report.rstrip().endswith("OK")


def test_problems_are_found_and_named(tmp_path: Path) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    (manifest.parent / "classifier.onnx").write_bytes(b"changed")
    port = free_port()
    code, report = doctor(
        f"backend: tensorrt\nbroker: {{url: 'mqtt://127.0.0.1:{port}'}}\nmodels: {{manifest: '{manifest}'}}\n"
    )
    assert code == 1
    assert (
        "focus-classifier 0.0.2 (focus_classifier, classifier.onnx): INVALID focus-classifier: classifier.onnx"
        in report
    )
    assert "unreachable: [Errno 111] Connection refused" in report
    assert "(DEGRADED)" in report and report.rstrip().endswith("PROBLEMS FOUND")


def test_engines_are_listed_and_judged(tmp_path: Path, broker: Broker) -> None:
    manifest_path = detector_and_classifier(tmp_path / "models")
    manifest = load_manifest(manifest_path)
    cache = EngineCache(tmp_path / "cache")
    current = cache.write_plan(PlanKey.of(manifest.models[0], "fp16", 4, ORIN), b"p")
    old = cache.write_plan(PlanKey.of(manifest.models[1], "fp16", 4, Target("10.3.0.26", "Orin (nvgpu)", (8, 7))), b"p")
    text = (
        f"broker: {{url: '{broker.url}'}}\nmodels: {{manifest: '{manifest_path}', engine_cache_dir: '{cache.root}'}}\n"
    )
    code, report = doctor(text, (ORIN, "TensorRT 10.3.0.30 on Orin (nvgpu) (sm87, integrated)"))
    assert f"{current.name}: valid" in report
    assert f"{old.name}: unusable: built with TensorRT 10.3.0.26, this is 10.3.0.30" in report
    assert "focus-classifier: no fp16 plan for this GPU yet" in report
    assert "tensorrt     yes  TensorRT 10.3.0.30 on Orin" in report
    assert "backend: auto -> onnxruntime while TensorRT engines build, then tensorrt" in report
    assert code == 0


def test_broker_check_reports_refusal(broker: Broker) -> None:
    ok, why = broker_check(parse_config(f"broker: {{url: '{broker.url}'}}").broker)
    assert ok and why.startswith("reachable")


def test_doctor_on_this_machine_from_the_command_line() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--broker", f"mqtt://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1  # nothing listens on that port
    assert (
        "classical    yes" in result.stdout and "backend: auto -> classical: no models in the manifest" in result.stdout
    )
    trt_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("tensorrt"))
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    assert ("tensorrt is not installed" in trt_line) is not has_trt
