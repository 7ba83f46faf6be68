"""Engine cache keys and validity, build progress, INT8 quantization (ONNX Runtime QDQ), the engines commands."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gateway.backends.settings import ModelsConfig, default_cache_dir
from gateway.engines.cache import CachedPlan, EngineCache, PlanKey, Target, plan_status
from gateway.engines.provider import TensorRTEngines
from gateway.engines.quantize import QuantizeError, quantize_qdq
from gateway.models.manifest import load_manifest
from gateway.models.preprocess import preprocess
from gateway.progress import BuildProgress
from gateway.runtimes.onnxruntime import OnnxRuntime
from tests.onnx_models import classifier_entry, conv_classifier, detector_and_classifier, write_manifest

REPO = Path(__file__).resolve().parents[1]
ORIN = Target("10.3.0.30", "Orin (nvgpu)", (8, 7))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return detector_and_classifier(tmp_path / "models")


def test_plan_names_carry_everything_a_plan_depends_on(manifest_path: Path) -> None:
    spec = load_manifest(manifest_path).models[0]
    key = PlanKey.of(spec, "fp16", 4, ORIN)
    name = key.filename()
    assert re.fullmatch(
        rf"cervix-detector-0-0-1_{spec.sha256[:16]}_fp16_b4_trt10.3.0.30_orin-nvgpu_sm87_[0-9a-f]{{12}}\.plan", name
    )
    upgraded = PlanKey.of(spec, "fp16", 4, Target("10.7.0", "Orin (nvgpu)", (8, 7))).filename()
    assert upgraded != name  # a JetPack upgrade looks for (and builds) a new plan


def test_plans_are_written_atomically_with_a_sidecar_and_judged(tmp_path: Path, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    cache = EngineCache(tmp_path / "cache")
    key = PlanKey.of(manifest.models[0], "fp16", 4, ORIN)
    assert cache.find(key) is None and cache.entries() == []
    path = cache.write_plan(key, b"plan bytes")
    assert cache.find(key) == path and path.read_bytes() == b"plan bytes"
    assert [p.name for p in cache.root.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    (entry,) = cache.entries()
    assert entry.meta is not None and entry.meta["onnx_sha256"] == manifest.models[0].sha256
    assert plan_status(entry, ORIN, manifest) == (True, "valid")
    newer = Target("10.7.0", "Orin (nvgpu)", (8, 7))
    assert plan_status(entry, newer, manifest) == (False, "built with TensorRT 10.3.0.30, this is 10.7.0")
    other_gpu = Target("10.3.0.30", "NVIDIA H100", (9, 0))
    assert plan_status(entry, other_gpu, manifest)[1].startswith("built for Orin (nvgpu) sm[8, 7], this is NVIDIA")
    assert plan_status(entry, None, manifest) == (False, "cannot check: no TensorRT GPU here")
    retrained = manifest.model_copy(update={"models": (manifest.models[0].model_copy(update={"sha256": "f" * 64}),)})
    assert plan_status(entry, ORIN, retrained)[1].startswith("built from another ONNX file")
    assert plan_status(CachedPlan(path, None), ORIN, manifest)[0] is False
    cache.discard(path)
    assert cache.entries() == [] and not path.with_suffix(".json").exists()


def test_the_build_lock_is_exclusive(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    code = (
        "import fcntl, sys; f = open(sys.argv[1], 'w');\n"
        "try:\n fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
        "except BlockingIOError:\n print('held')"
    )
    with cache.lock():
        held = subprocess.run([sys.executable, "-c", code, str(cache.root / ".build.lock")], capture_output=True)
    free = subprocess.run([sys.executable, "-c", code, str(cache.root / ".build.lock")], capture_output=True)
    assert held.stdout.strip() == b"held" and free.stdout.strip() == b"free"


def test_cache_dir_follows_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/colposcopy-gateway")
    assert default_cache_dir() == Path("/var/cache/colposcopy-gateway/engines")
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "colposcopy-gateway" / "engines"
    assert ModelsConfig(engine_cache_dir=tmp_path / "x").cache_dir() == tmp_path / "x"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_periodically_off_a_terminal() -> None:
    clock = Clock()
    progress = BuildProgress("det", interactive=False, stream=io.StringIO(), interval_s=30, clock=clock)
    progress.phase_start("Building engine", None, 4)
    progress.phase_start("Tactic timing", "Building engine", 10)
    for step in range(5):
        clock.now += 1
        assert progress.step_complete("Tactic timing", step)
    assert progress.fraction() == pytest.approx(0.5 / 4)  # half of the first of 4 outer steps
    clock.now = 40
    progress.step_complete("Tactic timing", 5)
    progress.phase_finish("Tactic timing")
    progress.step_complete("Building engine", 0)
    progress.phase_finish("Building engine")
    # the start of the outer phase, one periodic line after 30 s, the end of the outer phase
    assert progress.lines == ["Building engine 0/4", "Building engine 0/4 > Tactic timing 6/10", "Building engine done"]


def test_progress_draws_a_bar_on_a_terminal_and_cancels() -> None:
    out = io.StringIO()
    progress = BuildProgress("det", interactive=True, stream=out, clock=Clock())
    progress.phase_start("Building engine", None, 2)
    progress.step_complete("Building engine", 0)
    assert "det [###############...............]" in progress.lines[-1]
    assert out.getvalue().startswith("\rdet [")
    progress.cancel()
    assert progress.step_complete("Building engine", 1) is False


def photos(folder: Path, count: int = 6, seed: int = 1) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"p{i}.jpg"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_int8_quantization_writes_a_qdq_model_that_runs(tmp_path: Path) -> None:
    source = conv_classifier(tmp_path / "models" / "conv.onnx", 16)
    manifest = load_manifest(write_manifest(tmp_path / "models", [classifier_entry(source, 16)]))
    spec = manifest.models[0]
    target = tmp_path / "conv-qdq.onnx"
    assert quantize_qdq(source, target, spec, photos(tmp_path / "photos")) == 6
    ops = {node.op_type for node in onnx.load(str(target)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # photos like the calibration ones (the quantized ranges are theirs)
    more = sorted(photos(tmp_path / "more", seed=7).glob("*.jpg"))
    x = np.concatenate([preprocess(cv2.imread(str(p)), spec.input)[0] for p in more])
    exact = OnnxRuntime(source).run({"crops": x})["logits"]
    fused = OnnxRuntime(target).run({"crops": x})["logits"]  # ONNX Runtime's int8 kernels: it runs
    assert fused.shape == exact.shape and np.isfinite(fused).all()
    # The accuracy is checked as TensorRT computes a QDQ network: each Q/DQ pair rounds in float. ONNX Runtime's
    # fused int8 kernels are not that reference: on x86 without VNNI they can saturate (a CI host shifted these
    # logits by 0.12 where a VNNI host matches the float QDQ graph to 0.014).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    qdq = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    quantized = qdq.run(["logits"], {"crops": x})[0]
    assert np.abs(quantized - exact).max() < 0.1 * (np.abs(exact).max() + 1e-3) + 0.05
    with pytest.raises(QuantizeError, match=r"no \.jpg/\.jpeg/\.png photos"):
        quantize_qdq(source, target, spec, tmp_path / "empty")


def test_engines_quantize_command(tmp_path: Path) -> None:
    source = conv_classifier(tmp_path / "models" / "conv.onnx", 16)
    manifest = write_manifest(tmp_path / "models", [classifier_entry(source, 16)])
    folder = photos(tmp_path / "photos")
    result = cli(
        "engines", "quantize", "--manifest", str(manifest), "--cache-dir", str(tmp_path / "cache"),
        "--calibration", str(folder),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    qdq = list((tmp_path / "cache" / "qdq").glob("focus-classifier-0-0-2_*_qdq.onnx"))
    assert len(qdq) == 1 and "quantized with 6 photos" in result.stdout


def test_engines_build_says_why_it_cannot_here(tmp_path: Path, manifest_path: Path) -> None:
    target, why = TensorRTEngines(ModelsConfig()).probe()
    if target is not None:
        pytest.skip("TensorRT is usable here: tests/test_tensorrt.py covers building")
    result = cli("engines", "build", "--manifest", str(manifest_path), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"cannot build TensorRT engines here: {why}"
    assert "tensorrt is not installed" in why or "pycuda is not installed" in why or "CUDA" in why


def test_engines_build_names_manifest_problems(tmp_path: Path, manifest_path: Path) -> None:
    (manifest_path.parent / "detector.onnx").write_bytes(b"x")
    result = cli("engines", "build", "--manifest", str(manifest_path), "--model", "cervix-detector")
    assert result.returncode == 1 and "cervix-detector: detector.onnx has sha256" in result.stderr
    unknown = cli("engines", "build", "--manifest", str(REPO / "engines" / "manifest.yaml"), "--model", "nope")
    assert unknown.returncode == 1 and "no model named nope" in unknown.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.yaml").write_text("schema: colposcopy-gateway/models/1\nmodels: []\n")
    empty = cli("engines", "build", "--manifest", str(tmp_path / "empty" / "manifest.yaml"))
    assert empty.returncode == 0 and "lists no models: nothing to build" in empty.stdout


def test_the_background_build_command_line(tmp_path: Path) -> None:
    config = ModelsConfig(engine_cache_dir=tmp_path, precision="int8", calibration_dir=tmp_path / "p", max_batch=2)
    command = TensorRTEngines(config).build_command(tmp_path / "m.yaml", ["a", "b"])
    assert command[1:5] == ["-m", "gateway", "engines", "build"]
    joined = " ".join(command)
    for part in ("--precision int8", "--max-batch 2", f"--calibration {tmp_path / 'p'}", "--model a --model b"):
        assert part in joined


def test_the_sidecar_is_json(tmp_path: Path, manifest_path: Path) -> None:
    spec = load_manifest(manifest_path).models[0]
    path = EngineCache(tmp_path).write_plan(PlanKey.of(spec, "fp16", 1, ORIN), b"x")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["target"] == {
        "tensorrt_version": "10.3.0.30",
        "gpu_name": "Orin (nvgpu)",
        "compute_capability": [8, 7],
        "device": "",
        "cuda_driver": "",
        "l4t": "",
    }
    assert (meta["recipe"], meta["qdq_sha256"]) == ("2", None)
