"""The TensorRT path on a CPU-only machine: the gateway's TensorRT code run against stand-in ``tensorrt`` and
``pycuda`` modules (tests/standins: "plans" that ONNX Runtime runs, with faults on demand)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway.backends.settings import ModelsConfig
from gateway.config import GatewayConfig, parse_config
from gateway.doctor import run_doctor
from gateway.engines.provider import TensorRTEngines
from tests.onnx_models import detector_and_classifier
from tests.standin_gpu import StandIn, standin

__all__ = ["standin"]


def gateway_config(tmp_path: Path, extra: str = "") -> GatewayConfig:
    manifest = tmp_path / "models" / "manifest.yaml"
    if not manifest.is_file():
        detector_and_classifier(manifest.parent)
    models = f"manifest: '{manifest}', engine_cache_dir: '{tmp_path / 'cache'}'{extra}"
    return parse_config(f"broker: {{url: 'mqtt://127.0.0.1:1'}}\nmodels: {{{models}}}\n")


# --- item 1: one supported API range


def test_tensorrt_11_is_refused_and_doctor_says_what_to_install(standin: StandIn, tmp_path: Path) -> None:
    standin.set(version="11.0.0.4")
    target, why = TensorRTEngines(ModelsConfig()).probe()
    assert target is None
    assert why.startswith("TensorRT 11.0.0.4 is not supported: 11 removed the FP16/INT8 builder flags")
    assert "pip install 'tensorrt-cu12>=10.3,<11'" in why
    out = io.StringIO()
    run_doctor(gateway_config(tmp_path), out)
    assert f"tensorrt     no   {why}" in out.getvalue()


def test_tensorrt_10_3_up_to_11_is_accepted(standin: StandIn) -> None:
    for version in ("10.3.0.30", "10.13.3.9"):
        standin.set(version=version)
        target, why = TensorRTEngines(ModelsConfig()).probe()
        assert target is not None and target.tensorrt_version == version, why


def test_a_builder_exception_fails_that_model_only_in_one_line(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.engines.command import build

    standin.set("build_raises")
    assert build(gateway_config(tmp_path), [], False) == 1
    err = capsys.readouterr().err
    for name in ("cervix-detector", "focus-classifier"):
        assert f"{name}: build failed: ValueError: stand-in: the builder raised" in err
    assert "Traceback" not in err
