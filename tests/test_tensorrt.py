"""The TensorRT path on a real GPU: build plans from small ONNX graphs, run them, rebuild stale ones, switch over.

Marked ``gpu``: skipped (with the reason) where TensorRT, pycuda or a CUDA GPU is missing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gateway.backends.select import select_backend
from gateway.backends.settings import ModelsConfig
from gateway.config import parse_config
from gateway.engines.cache import EngineCache, PlanKey
from gateway.engines.provider import TensorRTEngines
from gateway.models.manifest import check_signature, load_manifest
from gateway.progress import BuildProgress
from gateway.runtimes.onnxruntime import OnnxRuntime
from gateway.runtimes.runtime import InferenceError, shapes
from tests.onnx_models import detector_and_classifier

REPO = Path(__file__).resolve().parents[1]
TARGET, WHY = TensorRTEngines(ModelsConfig()).probe()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(TARGET is None, reason=f"no TensorRT GPU here: {WHY}")]


def build(tmp_path: Path, precision: str = "fp16") -> tuple[Path, Path]:
    """Build the detector's plan; returns (manifest, plan)."""
    from gateway.engines.build import BuildOptions, build_plan

    assert TARGET is not None
    manifest_path = detector_and_classifier(tmp_path / "models")
    manifest = load_manifest(manifest_path)
    spec = manifest.models[0]
    cache = EngineCache(tmp_path / "cache")
    progress = BuildProgress(spec.name, interactive=False)
    plan = build_plan(
        manifest.onnx_path(spec), cache.timing_cache_path(TARGET), BuildOptions(precision, 4, 256), progress
    )
    assert progress.lines, "IProgressMonitor reported nothing"
    assert cache.timing_cache_path(TARGET).stat().st_size > 0
    return manifest_path, cache.write_plan(PlanKey.of(spec, precision, 4, TARGET), plan)


def test_a_built_plan_runs_like_onnxruntime_and_batches(tmp_path: Path) -> None:
    from gateway.runtimes.tensorrt import TensorRTRuntime

    manifest_path, plan = build(tmp_path, "fp32")
    manifest = load_manifest(manifest_path)
    spec = manifest.models[0]
    runtime = TensorRTRuntime(plan)
    try:
        check_signature(spec, shapes(runtime.inputs), shapes(runtime.outputs))
        assert runtime.max_batch == 4
        reference = OnnxRuntime(manifest.onnx_path(spec))
        x = np.random.default_rng(0).normal(0, 1, (3, 3, 32, 32)).astype(np.float32)
        got, want = runtime.run({"images": x}), reference.run({"images": x})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
        results: list[dict[str, np.ndarray]] = []
        threads = [threading.Thread(target=lambda: results.append(runtime.run({"images": x[:1]}))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 8 and all(r["cls_logits"].shape == (1, 4, 1) for r in results)
        free, total = runtime.memory()  # from this (non-owner) thread: pushes and pops the context
        assert 0 < free <= total
        with pytest.raises(InferenceError, match="batch 5 > the engine's 4"):
            runtime.run({"images": np.zeros((5, 3, 32, 32), dtype=np.float32)})
    finally:
        runtime.close()


def test_a_plan_that_does_not_load_says_why(tmp_path: Path) -> None:
    from gateway.runtimes.tensorrt import TensorRTRuntime

    _, plan = build(tmp_path)
    data = bytearray(plan.read_bytes())
    data[0:32] = b"\0" * 32  # damage the header (magic and version tag), as a plan from another TensorRT
    plan.write_bytes(bytes(data))
    with pytest.raises(InferenceError, match="cannot load it"):
        TensorRTRuntime(plan)


def test_engines_build_command_then_up_to_date(tmp_path: Path) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    args = ["engines", "build", "--manifest", str(manifest), "--cache-dir", str(tmp_path / "cache"), "--max-batch", "2"]
    first = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": built ") == 2
    again = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("up to date") == 2


def test_the_gateway_switches_to_tensorrt_when_the_background_build_is_done(tmp_path: Path) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    config = parse_config(f"models: {{manifest: '{manifest}', engine_cache_dir: '{tmp_path / 'cache'}'}}\n")
    slot = select_backend(config)
    assert slot.current.name == "onnxruntime" and "while they build" in slot.reason
    assert slot.wait_settled(600)
    assert (slot.current.name, slot.state) == ("tensorrt", "online"), slot.reason
    again = select_backend(config)  # next start: cached engines at once
    assert again.current.name == "tensorrt" and again.reason.endswith("cached engines")
