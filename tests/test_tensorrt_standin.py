"""The TensorRT path on a CPU-only machine: the gateway's TensorRT code run against stand-in ``tensorrt`` and
``pycuda`` modules (tests/standins: "plans" that ONNX Runtime runs, with faults on demand)."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gateway.backends.select import select_backend
from gateway.backends.settings import ModelsConfig
from gateway.config import GatewayConfig, parse_config
from gateway.doctor import run_doctor
from gateway.engines.provider import TensorRTEngines
from gateway.judge import PhotoRequest, build_judge
from gateway.models.manifest import load_manifest
from gateway.progress import BuildProgress
from gateway.runtimes.runtime import InferenceError
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


# --- item 3: runtimes that close and never hang


def standin_plan(tmp_path: Path, max_batch: int = 4) -> Path:
    """The classifier of ``detector_and_classifier`` (gain 1: its logits follow the input) as a stand-in plan."""
    from gateway.engines.build import BuildOptions, build_plan

    models = tmp_path / "plan-models"
    detector_and_classifier(models, gain=1.0, bias=0.0)
    options = BuildOptions("fp16", max_batch)
    plan = build_plan(models / "classifier.onnx", tmp_path / "timing.cache", options, BuildProgress("c", False))
    path = tmp_path / "classifier.plan"
    path.write_bytes(plan)
    return path


def crops(rows: int, value: float = 0.0) -> dict[str, np.ndarray]:
    return {"crops": np.full((rows, 3, 16, 16), value, dtype=np.float32)}


def test_run_racing_close_always_answers(standin: StandIn, tmp_path: Path) -> None:
    """Before: 20 callers stuck in 40 trials (the request queued behind close's None, or after the release)."""
    from gateway.runtimes.tensorrt import TensorRTRuntime

    plan = standin_plan(tmp_path)
    for _ in range(40):
        runtime = TensorRTRuntime(plan)
        answers: list[object] = []

        def call(runtime: TensorRTRuntime = runtime, answers: list[object] = answers) -> None:
            try:
                answers.append(runtime.run(crops(1)))
            except InferenceError as exc:
                answers.append(exc)

        threads = [threading.Thread(target=call, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        runtime.close()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a caller waits forever"
        assert len(answers) == 4
    assert standin.cuda.allocated == 0 and standin.cuda.contexts == 0


def test_a_close_that_times_out_still_releases_the_gpu_once_the_batch_ends(standin: StandIn, tmp_path: Path) -> None:
    """Before: close emptied the queue, stop marker included, so the thread finished its batch, waited forever and
    never released the context or the device memory."""
    from gateway.runtimes.tensorrt import TensorRTRuntime

    runtime = TensorRTRuntime(standin_plan(tmp_path))
    standin.set("slow_execute:1.5")
    caller = threading.Thread(target=lambda: runtime.run(crops(1)), daemon=True)
    caller.start()
    time.sleep(0.3)  # the batch is running
    runtime.close(timeout=0.1)
    caller.join(30)
    deadline = time.monotonic() + 30
    while standin.cuda.contexts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert standin.cuda.allocated == 0 and standin.cuda.contexts == 0


def test_a_closed_runtime_answers_every_call_with_inference_error(standin: StandIn, tmp_path: Path) -> None:
    from gateway.runtimes.tensorrt import TensorRTRuntime

    runtime = TensorRTRuntime(standin_plan(tmp_path))
    assert runtime.run(crops(2))["logits"].shape == (2, 2)
    runtime.close()
    assert runtime._requests.empty()  # the thread had ended: no stop marker put back for nobody
    with pytest.raises(InferenceError, match=r"classifier\.plan: the runtime is closed"):
        runtime.run(crops(1))
    with pytest.raises(InferenceError, match="no CUDA context"):
        runtime.memory()
    runtime.close()


def test_a_failed_load_whose_release_raises_still_returns(standin: StandIn, tmp_path: Path) -> None:
    """Before: the constructor never returned (the release raised before the load's error was handed over)."""
    from gateway.runtimes.tensorrt import TensorRTRuntime

    plan = standin_plan(tmp_path)
    standin.set("no_exec_context,detach_raises")
    box: list[BaseException] = []

    def load() -> None:
        try:
            TensorRTRuntime(plan)
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the constructor never returned"
    assert isinstance(box[0], InferenceError) and "cannot create an execution context" in str(box[0])


def test_releasing_is_best_effort(standin: StandIn, tmp_path: Path) -> None:
    from gateway.runtimes.tensorrt import TensorRTRuntime

    runtime = TensorRTRuntime(standin_plan(tmp_path))
    runtime.run(crops(1))
    standin.set("free_raises")
    runtime.close()  # freeing the host buffers raises: logged, and the context is released all the same
    assert standin.cuda.contexts == 0
    standin.set("")
    runtime = TensorRTRuntime(runtime.plan)
    standin.set("detach_raises")
    runtime.close()  # the other way round: the buffers are freed though the context does not detach
    assert standin.cuda.contexts == 1


# --- item 4: a broken CUDA context is not served forever


def png(value: int = 128) -> bytes:
    return bytes(cv2.imencode(".png", np.full((120, 160, 3), value, dtype=np.uint8))[1].tobytes())


def test_one_broken_model_switches_to_onnxruntime_though_the_other_succeeds(standin: StandIn, tmp_path: Path) -> None:
    """Before: the detector's success on each photo reset the shared count, so a broken focus model failed every
    photo and the gateway never switched."""
    from gateway.engines.command import build

    config = gateway_config(tmp_path)
    assert build(config, [], False) == 0
    judge = build_judge(config)
    slot = judge.pipeline.slot
    assert slot.current.name == "tensorrt", slot.reason
    standin.set("broken_input:crops")  # the focus classifier's input: the detector keeps working
    for n in range(3):
        judge.judge(PhotoRequest("s", "d", f"bad-{n}", png(), in_run=False))
    deadline = time.monotonic() + 60
    while slot.current.name == "tensorrt" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (slot.current.name, slot.state) == ("onnxruntime", "degraded")
    slot.close()


def test_a_sticky_cuda_error_switches_to_onnxruntime_degraded_until_restart(standin: StandIn, tmp_path: Path) -> None:
    from gateway.engines.command import build

    config = gateway_config(tmp_path)
    assert build(config, [], False) == 0
    judge = build_judge(config)
    slot = judge.pipeline.slot
    assert (slot.current.name, slot.state) == ("tensorrt", "online"), slot.reason
    changes: list[tuple[str, str]] = []
    slot.on_change(lambda s: changes.append((s.current.name, s.state)))
    first = judge.judge(PhotoRequest("s", "d", "ok", png(), in_run=False)).verdict
    assert (first.backend, first.verdict) != ("tensorrt", "error")
    standin.set("sticky_after:0")  # every execute_async_v3 from now on fails, as after a sticky CUDA error
    for n in range(3):
        failed = judge.judge(PhotoRequest("s", "d", f"bad-{n}", png(), in_run=False)).verdict
        assert (failed.backend, failed.verdict, [str(r) for r in failed.reasons]) == ("tensorrt", "error", ["internal"])
    deadline = time.monotonic() + 60
    while not changes and time.monotonic() < deadline:  # the listeners hear of it just after the switch
        time.sleep(0.05)
    assert (slot.current.name, slot.state) == ("onnxruntime", "degraded")
    assert slot.reason.startswith("TensorRT failed 3 inferences in a row (")
    assert slot.reason.endswith("serving through onnxruntime until restart")
    assert changes == [("onnxruntime", "degraded")]
    after = judge.judge(PhotoRequest("s", "d", "after", png(), in_run=False)).verdict
    assert after.backend == "onnxruntime" and after.verdict != "error"
    while standin.cuda.contexts and time.monotonic() < deadline:  # the TensorRT runtimes are closed
        time.sleep(0.05)
    assert standin.cuda.contexts == 0
    slot.close()


@pytest.mark.parametrize("fault", ["execute_raises", "sticky_after:0"])
def test_the_stream_is_synchronised_after_a_failed_execute(standin: StandIn, tmp_path: Path, fault: str) -> None:
    from gateway.runtimes.tensorrt import TensorRTRuntime

    runtime = TensorRTRuntime(standin_plan(tmp_path))
    try:
        before = standin.cuda.synchronized
        standin.set(fault)
        with pytest.raises(InferenceError):
            runtime.run(crops(1))
        assert standin.cuda.synchronized == before + 1
    finally:
        runtime.close()


# --- item 5: engine builds that survive an 8 GB Orin Nano


def meminfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, available_mib: int) -> None:
    import gateway.runtimes.tensorrt as trt_backend

    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal: 7621304 kB\nMemFree: 123456 kB\nMemAvailable: {available_mib << 10} kB\n")
    monkeypatch.setattr(trt_backend, "MEMINFO", path)


def test_the_build_memory_pools_follow_the_memory_available(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.engines.command import build

    meminfo(tmp_path, monkeypatch, 3072)
    assert build(gateway_config(tmp_path), ["focus-classifier"], False) == 0
    [started] = standin.events("build_started")
    # (3072 - 768 reserved) MiB: tactics may take 3/4, the workspace 1/4 (under the 1024 MiB cap)
    assert started["pools"] == {"WORKSPACE": 576 << 20, "TACTIC_DRAM": 1728 << 20}
    meminfo(tmp_path, monkeypatch, 900)
    assert build(gateway_config(tmp_path), ["focus-classifier"], True) == 1
    assert "focus-classifier: build failed: only 900 MiB of memory available" in capsys.readouterr().err
    assert len(standin.events("build_started")) == 1  # not tried


def slow_build_started(standin: StandIn, tmp_path: Path, steps: str = "200:0.1") -> tuple[Any, Any, list[object]]:
    """A background build (as the gateway runs it) whose child has started building: (engines, thread, outcome)."""
    config = gateway_config(tmp_path)
    standin.set(f"build_steps:{steps}")
    engines = TensorRTEngines(config.models)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(engines.build(config.models.manifest_path(), ["focus-classifier"]))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not standin.events("build_started") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert standin.events("build_started"), "the build child did not start building"
    return engines, thread, outcome


def test_the_build_child_is_the_oom_killers_first_choice_and_runs_nicer(standin: StandIn, tmp_path: Path) -> None:
    engines, thread, _ = slow_build_started(standin, tmp_path)
    pid = standin.events("build_started")[0]["pid"]
    try:
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "1000"
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    finally:
        engines.cancel()
        thread.join(120)


def test_a_failed_build_is_not_retried_at_every_restart_and_force_clears_it(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.engines.command import build

    config = gateway_config(tmp_path)
    standin.set("build_fails")
    assert build(config, ["focus-classifier"], False) == 1
    err = capsys.readouterr().err
    assert "focus-classifier: build failed: classifier.onnx: TensorRT could not build it: stand-in: no tactic" in err
    assert "; not tried again before " in err and "(engines build --force tries now)" in err
    standin.set("")  # it would build now, but the backoff holds (a restart loop must not rebuild)
    assert build(config, ["focus-classifier"], False) == 1
    err = capsys.readouterr().err
    assert "focus-classifier: not rebuilt: 1 failed build(s), the last: classifier.onnx: TensorRT could not" in err
    assert len(standin.events("build_started")) == 1
    assert build(config, ["focus-classifier"], True) == 0  # --force
    assert "focus-classifier: built " in capsys.readouterr().out
    assert build(config, ["focus-classifier"], False) == 0
    assert "up to date" in capsys.readouterr().out
    assert not list((tmp_path / "cache").glob("*.failed.json"))


def test_the_backoff_doubles_up_to_a_day(tmp_path: Path) -> None:
    from gateway.engines.cache import EngineCache, PlanKey, Target

    cache = EngineCache(tmp_path)
    key = PlanKey("m", "1", "0" * 64, "fp16", 4, Target("10.3.0.30", "Orin (nvgpu)", (8, 7)))
    waits = [cache.record_failure(key, "no", now=1000.0) - 1000.0 for _ in range(9)]
    assert waits == [900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 57600.0, 86400.0, 86400.0]
    failure = cache.failure(key)
    assert failure is not None and (failure.count, failure.error) == (9, "no")


def test_cancelling_interrupts_the_build_which_keeps_its_timing_cache(standin: StandIn, tmp_path: Path) -> None:
    from gateway.engines.provider import BuildFailed

    engines, thread, outcome = slow_build_started(standin, tmp_path)
    started = time.monotonic()
    engines.cancel()
    thread.join(120)
    assert isinstance(outcome[0], BuildFailed) and str(outcome[0]) == "cancelled"
    assert time.monotonic() - started < 60
    [cancelled] = standin.events("build_cancelled")  # SIGINT: TensorRT was asked to stop at its next step
    assert cancelled["pid"] == standin.events("build_started")[0]["pid"]
    assert [p.read_bytes() for p in (tmp_path / "cache").glob("timing_*.cache")] == [b"timing+"]


def test_cancelling_a_build_in_a_long_step_fits_the_units_stop_timeout(standin: StandIn, tmp_path: Path) -> None:
    """Before: the gateway's stop waited up to 60 s for the step to end, then 10 s more: past TimeoutStopSec=30."""
    engines, thread, _outcome = slow_build_started(standin, tmp_path, steps="4:40")
    started = time.monotonic()
    engines.cancel()
    thread.join(120)
    assert time.monotonic() - started < 15


def test_a_build_past_its_time_limit_is_stopped(standin: StandIn, tmp_path: Path) -> None:
    from gateway.engines.provider import BuildFailed

    config = gateway_config(tmp_path, ", build_timeout_s: 20")
    standin.set("build_steps:1200:0.1")  # two minutes
    started = time.monotonic()
    with pytest.raises(BuildFailed, match=r"no result within 20 s \(models.build_timeout_s\): stopped"):
        TensorRTEngines(config.models).build(config.models.manifest_path(), ["focus-classifier"])
    assert time.monotonic() - started < 90
    assert standin.events("build_cancelled")


def test_plans_that_deserialize_but_find_no_memory_are_kept(standin: StandIn, tmp_path: Path) -> None:
    from gateway.engines.command import build

    config = gateway_config(tmp_path)
    assert build(config, [], False) == 0
    plans = sorted((tmp_path / "cache").glob("*.plan"))
    standin.set("no_exec_context")  # "cannot create an execution context (out of GPU memory?)"
    slot = select_backend(config)
    assert (slot.current.name, slot.state) == ("onnxruntime", "degraded")
    assert "the cached engines do not open (" in slot.reason and "out of GPU memory?" in slot.reason
    assert sorted((tmp_path / "cache").glob("*.plan")) == plans and len(plans) == 2
    assert slot.wait_settled(0)  # no rebuild
    slot.close()


def test_plans_of_another_tensorrt_are_discarded_and_rebuilt(standin: StandIn, tmp_path: Path) -> None:
    from gateway.engines.command import build

    config = gateway_config(tmp_path)
    assert build(config, [], False) == 0
    [old] = (tmp_path / "cache").glob("focus-classifier*.plan")
    standin.set(version="10.3.1.1")
    # the new version has other plan names: put the old plan where the new key looks, as after a JetPack upgrade
    # that kept the version string (the case the deserialisation check is for)
    import gateway.engines.provider as provider

    engines = provider.TensorRTEngines(config.models)
    target, _ = engines.probe()
    assert target is not None
    manifest = load_manifest(config.models.manifest_path())
    for spec in manifest.models:
        old_plan = next((tmp_path / "cache").glob(f"{spec.name}*.plan"))
        engines.cache.plan_path(engines.key(spec, target)).write_bytes(old_plan.read_bytes())
    slot = select_backend(config)
    assert slot.current.name == "onnxruntime" and "stale (" in slot.reason
    assert "Version tag does not match" in slot.reason
    assert slot.wait_settled(300)
    assert (slot.current.name, slot.state) == ("tensorrt", "online"), slot.reason
    slot.close()
    assert old.is_file()  # another key's plan is left alone


def with_classifier_reference(tmp_path: Path) -> GatewayConfig:
    """The test manifest, its classifier following its input (gain 4), with reference outputs for 4 grey crops."""
    from gateway.engines.reference import write_reference
    from gateway.runtimes.onnxruntime import OnnxRuntime

    manifest_path = detector_and_classifier(tmp_path / "models", gain=4.0, bias=-1.0)
    manifest = load_manifest(manifest_path)
    spec = manifest.models[1]
    greys = [np.full((40, 50, 3), level, dtype=np.uint8) for level in (30, 100, 160, 230)]
    write_reference(manifest, spec, greys, OnnxRuntime)
    return gateway_config(tmp_path)


@pytest.mark.parametrize(
    ("fault", "found"),
    [("ignore_input", "row 0 (batch 1): 0."), ("swap_rows", "row 0 (batch 4): 0.")],
)
def test_a_plan_that_does_not_reproduce_the_fp32_reference_is_refused(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str, found: str
) -> None:
    from gateway.engines.command import build

    config = with_classifier_reference(tmp_path)
    standin.set(fault)
    assert build(config, ["focus-classifier"], False) == 1
    err = capsys.readouterr().err
    assert "focus-classifier: build failed: the new plan does not reproduce the FP32 reference: " in err
    assert found in err
    assert not list((tmp_path / "cache").glob("*.plan"))
    standin.set("")
    assert build(config, ["focus-classifier"], True) == 0
    out = capsys.readouterr().out
    assert "focus-classifier: the new plan reproduces the FP32 reference (4 rows, batch 1 and batches)" in out


def test_a_fused_focus_model_builds_checks_its_reference_and_judges_on_tensorrt(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fused model's second input (classical measures) reaches the plan, its reference and its verdicts."""
    from gateway.engines.command import build
    from gateway.engines.reference import write_references
    from gateway.focus_measures import FOCUS_V1
    from tests.onnx_models import (
        DETECTOR_CLS,
        DETECTOR_REG,
        DETECTOR_SIZE,
        classifier_entry,
        constant_retinanet,
        detector_entry,
        fused_classifier,
        write_manifest,
    )

    folder = tmp_path / "models"
    folder.mkdir()
    weights = np.zeros(len(FOCUS_V1), np.float32)
    weights[FOCUS_V1.index("band_0.5_1")] = 1.0
    det = constant_retinanet(folder / "detector.onnx", DETECTOR_SIZE, DETECTOR_CLS, DETECTOR_REG)
    fused = fused_classifier(folder / "classifier.onnx", 16, weights, -3.0)
    measures = {"name": "measures", "set": "focus-v1", "count": len(FOCUS_V1)}
    entries = [detector_entry(det), classifier_entry(fused, threshold=0.5, measures=measures)]
    write_references(write_manifest(folder, entries))
    config = gateway_config(tmp_path)
    assert build(config, [], False) == 0
    out = capsys.readouterr().out
    assert "focus-classifier: the new plan reproduces the FP32 reference (4 rows, batch 1 and batches)" in out
    judge = build_judge(config)
    assert judge.pipeline.slot.current.name == "tensorrt", judge.pipeline.slot.reason
    verdict = judge.judge(PhotoRequest("s", "d", "fused", png(), in_run=False)).verdict
    assert verdict.backend == "tensorrt" and verdict.verdict != "error", verdict.detail
    assert verdict.focus is not None and 0.0 <= verdict.focus.sharp_probability <= 1.0
    judge.pipeline.slot.close()


def test_a_plan_delivers_both_outputs_of_a_focus_model_with_a_blur_type(standin: StandIn, tmp_path: Path) -> None:
    """Each output has its own bound buffer and comes back per row, batched or alone, as ONNX Runtime gives it."""
    from gateway.engines.build import BuildOptions, build_plan
    from gateway.runtimes.onnxruntime import OnnxRuntime
    from gateway.runtimes.tensorrt import TensorRTRuntime
    from tests.onnx_models import typed_classifier

    onnx_path = typed_classifier(tmp_path / "typed.onnx", 16, 0.5, -1.0, gain=2.0, motion_gain=-3.0)
    plan = tmp_path / "typed.plan"
    plan.write_bytes(
        build_plan(onnx_path, tmp_path / "timing.cache", BuildOptions("fp16", 4), BuildProgress("t", False))
    )
    rng = np.random.default_rng(7)
    feeds = {"crops": rng.normal(0, 1, (3, 3, 16, 16)).astype(np.float32)}
    want = OnnxRuntime(onnx_path).run(feeds)
    runtime = TensorRTRuntime(plan)
    try:
        assert [t.name for t in runtime.outputs] == ["logits", "blur_type"]
        got = runtime.run(feeds)
        assert sorted(got) == ["blur_type", "logits"]
        for name in ("logits", "blur_type"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
            for row in range(3):
                alone = runtime.run({"crops": feeds["crops"][row : row + 1]})[name]
                np.testing.assert_allclose(alone, want[name][row : row + 1], rtol=1e-5, atol=1e-5)
        assert len({round(float(v), 4) for v in got["blur_type"][:, 1]}) == 3  # the rows differ: a mix-up would show
    finally:
        runtime.close()


def test_a_plan_whose_blur_type_flips_is_refused_and_a_faithful_one_gives_the_models_type(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.engines.command import build
    from tests.onnx_models import detector_and_typed_classifier

    detector_and_typed_classifier(tmp_path / "models")
    config = gateway_config(tmp_path)
    standin.set("swap_columns:blur_type")  # [defocus, motion] swapped: the sharp probability is untouched
    assert build(config, ["focus-classifier"], False) == 1
    err = capsys.readouterr().err
    assert "focus-classifier: build failed: the new plan does not reproduce the FP32 reference: " in err
    assert "row 0 (batch 1): motion probability 0.0474 flips the blur type at 0.5 (0.9526)" in err
    assert "more than 0.02 off" not in err and "flips the verdict" not in err
    standin.set("")
    assert build(config, [], True) == 0  # forced: a failed build is otherwise retried only after a backoff
    assert "focus-classifier: the new plan reproduces the FP32 reference (4 rows, batch 1 and batches)" in (
        capsys.readouterr().out
    )
    judge = build_judge(config)
    try:
        assert judge.pipeline.slot.current.name == "tensorrt", judge.pipeline.slot.reason
        verdict = judge.judge(PhotoRequest("s", "d", "typed", png(), in_run=False)).verdict
        assert (verdict.backend, verdict.verdict) == ("tensorrt", "recapture"), verdict.detail
        assert [str(r) for r in verdict.reasons] == ["out_of_focus", "motion_blur"]
        standin.set("swap_columns:blur_type")  # what the plan's buffers hold is what the verdict says
        verdict = judge.judge(PhotoRequest("s", "d", "typed-2", png(), in_run=False)).verdict
        assert [str(r) for r in verdict.reasons] == ["out_of_focus", "defocus"]
    finally:
        judge.pipeline.slot.close()


def test_references_are_written_for_every_model_and_reproduced_by_onnxruntime(tmp_path: Path) -> None:
    from gateway.engines.reference import check, load_reference, write_references
    from gateway.runtimes.onnxruntime import OnnxRuntime

    manifest_path = detector_and_classifier(tmp_path / "models", gain=4.0, bias=-1.0)
    assert [p.name for p in write_references(manifest_path)] == ["detector.reference.npz", "classifier.reference.npz"]
    manifest = load_manifest(manifest_path)
    for spec in manifest.models:
        reference = load_reference(manifest, spec)
        assert reference is not None and len(reference.images) == 4
        assert check(spec, reference, OnnxRuntime(manifest.onnx_path(spec)), 4) == []


def test_the_shipped_models_reference_outputs_are_theirs_and_onnxruntime_reproduces_them() -> None:
    from gateway.backends.settings import REPO_MANIFEST
    from gateway.engines.reference import check, load_reference, probabilities
    from gateway.runtimes.onnxruntime import OnnxRuntime

    manifest = load_manifest(REPO_MANIFEST)
    for spec in manifest.models:
        reference = load_reference(manifest, spec)
        assert reference is not None, f"{spec.name}: no reference shipped (python -m gateway.engines.reference)"
        p = probabilities(spec, reference.outputs)
        assert (p >= spec.threshold).any() and (p < spec.threshold).any(), "both verdicts among the rows"
        runtime = OnnxRuntime(manifest.onnx_path(spec))
        try:
            assert check(spec, reference, runtime, 4) == []
        finally:
            runtime.close()


# --- item 6: plans that tell Orins apart


def test_plans_differ_between_orin_nano_nx_and_agx(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.engines.command import build

    config = gateway_config(tmp_path)
    spec = load_manifest(config.models.manifest_path()).models[1]
    names = {}
    for gpu in ("orin-nano", "orin-nx", "agx-orin"):
        standin.set(gpu=gpu)
        engines = TensorRTEngines(config.models)
        target, why = engines.probe()
        assert target is not None, why
        assert (target.gpu_name, target.compute_capability) == ("Orin (nvgpu)", (8, 7))  # alike: the old key
        names[gpu] = engines.key(spec, target).filename()
        assert build(config, ["focus-classifier"], False) == 0
        assert "focus-classifier: built " in capsys.readouterr().out  # not "up to date" with another Orin's plan
    assert len(set(names.values())) == 3
    # an Orin NX 8GB and an Orin Nano 8GB have the same multiprocessors and memory: the board tells them apart
    import gateway.runtimes.tensorrt as trt_backend

    standin.set(gpu="orin-nano")
    boards = {}
    for board in ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit", "NVIDIA Jetson Orin NX 8GB"):
        (tmp_path / "model").write_bytes(board.encode() + b"\0")
        monkeypatch.setattr(trt_backend, "BOARD_MODEL", tmp_path / "model")
        target, _ = TensorRTEngines(config.models).probe()
        assert target is not None and target.device.startswith(board)
        boards[board] = target.slug()
    assert len(set(boards.values())) == 2


def test_plans_are_rebuilt_after_a_cuda_l4t_recipe_or_tensorrt_change(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gateway.engines.cache as cache_module
    import gateway.runtimes.tensorrt as trt_backend
    from gateway.engines.command import build

    config = gateway_config(tmp_path)
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr(trt_backend, "L4T_RELEASE", release)

    def rebuilt() -> bool:
        assert build(config, ["focus-classifier"], False) == 0
        out = capsys.readouterr().out
        assert ("focus-classifier: built " in out) != ("up to date" in out)
        return "focus-classifier: built " in out

    assert rebuilt()
    assert not rebuilt()
    assert TensorRTEngines(config.models).probe()[0].l4t == "R36.4.0"  # type: ignore[union-attr]
    monkeypatch.setenv("STANDIN_CUDA_DRIVER", "12080")  # a CUDA upgrade
    assert rebuilt()
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    assert rebuilt()
    monkeypatch.setattr(cache_module, "RECIPE", "test-recipe")  # the builder changed
    assert rebuilt()
    assert not rebuilt()
    standin.set(version="10.3.0.31")
    assert rebuilt()


def test_a_requantisation_rebuilds_the_int8_plan(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.engines.command import build, quantize

    detector_and_classifier(tmp_path / "models", gain=4.0, bias=-1.0)
    rng = np.random.default_rng(3)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 120, (40, 50, 3), dtype=np.uint8))
    config = gateway_config(tmp_path, f", precision: int8, calibration_dir: '{folder}'")
    assert build(config, ["focus-classifier"], False) == 0
    assert "focus-classifier: built " in capsys.readouterr().out
    for i in range(4):  # new photos, brighter: other quantisation ranges
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(100, 255, (40, 50, 3), dtype=np.uint8))
    assert quantize(config, ["focus-classifier"], True) == 0
    assert build(config, ["focus-classifier"], False) == 0
    assert "focus-classifier: built " in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("focus-classifier*_int8_*.plan"))) == 2
