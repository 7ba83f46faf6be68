"""The commands as a user runs them: ``check`` on files, ``run`` as a process, ``simulate`` against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import cv2

from gateway.scenes import SceneSpec, encode_jpeg, render
from tests.conftest import Broker, Recorder

REPO = Path(__file__).resolve().parents[1]


def write_photos(folder: Path) -> list[Path]:
    folder.mkdir()
    sharp = render(SceneSpec(width=1600, height=1200, seed=3))
    blurred = render(SceneSpec(width=1600, height=1200, blur="motion", blur_px=14, seed=4))
    paths = [folder / "b-sharp.jpg", folder / "a-blurred.png", folder / "c-garbage.jpg"]
    paths[0].write_bytes(encode_jpeg(sharp.image))
    cv2.imwrite(str(paths[1]), blurred.image)
    paths[2].write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return paths


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_check_json_gives_one_verdict_per_file_in_order(tmp_path: Path) -> None:
    paths = write_photos(tmp_path / "photos")
    result = gateway_cli("check", "--json", *map(str, paths))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["image_id"] for v in verdicts] == ["b-sharp.jpg", "a-blurred.png", "c-garbage.jpg"]
    assert all((v["site"], v["device"]) == ("local", "local") for v in verdicts)
    assert [v["verdict"] for v in verdicts] == ["accept", "recapture", "error"]
    assert verdicts[1]["reasons"] == ["out_of_focus", "motion_blur"] and verdicts[2]["reasons"] == ["undecodable"]


def test_check_table_and_annotations(tmp_path: Path) -> None:
    paths = write_photos(tmp_path / "photos")
    result = gateway_cli("check", "--annotate", str(tmp_path / "out"), *map(str, paths))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["file", "verdict"]
    assert "accept" in lines[1] and "recapture" in lines[2] and "undecodable" in lines[3]
    drawn = cv2.imread(str(tmp_path / "out" / "b-sharp.jpg"))
    assert drawn is not None and drawn.shape[2] == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-blurred.jpg", "b-sharp.jpg"]


def test_run_serves_simulated_devices_and_stops_cleanly_on_sigterm(broker: Broker, recorder: Recorder) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--config",
            str(REPO / "config" / "gateway.yaml"),
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert recorder.wait_for(1, "colposcopy/gateways/", timeout=20), "gateway never came online"
        sim = gateway_cli(
            "simulate",
            "--broker",
            broker.url,
            "--devices",
            "2",
            "--count",
            "3",
            "--rate",
            "0",
            "--size",
            "800x600",
        )
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert "photos sent: 6, answered: 6, unanswered: 0" in sim.stdout
        assert len(recorder.wait_for(6, "colposcopy/demo/")) >= 6
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    states = [json.loads(m.payload)["state"] for m in recorder.wait_for(2, "colposcopy/gateways/")]
    assert states == ["online", "offline"]
    verdict_logs = [json.loads(line) for line in stderr.splitlines() if '"event": "verdict"' in line]
    assert len(verdict_logs) == 6 and all("timings_ms" in entry for entry in verdict_logs)


def test_last_will_says_offline_when_the_gateway_dies(broker: Broker, recorder: Recorder) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--broker", broker.url], cwd=REPO, stderr=subprocess.DEVNULL
    )
    try:
        assert recorder.wait_for(1, "colposcopy/gateways/", timeout=20)
    finally:
        process.kill()
        process.wait()
    states = [json.loads(m.payload)["state"] for m in recorder.wait_for(2, "colposcopy/gateways/", timeout=60)]
    assert states == ["online", "offline"]


def scene_files(folder: Path, count: int) -> list[Path]:
    """``count`` generated photos, named so that sorting them by name gives their order."""
    folder.mkdir(parents=True)
    paths = []
    for n in range(count):
        spec = SceneSpec(width=1600, height=1200, seed=20 + n, **({"blur": "defocus", "blur_px": 9} if n % 2 else {}))
        paths.append(folder / f"p{n:02d}.jpg")
        paths[-1].write_bytes(encode_jpeg(render(spec).image))
    return paths


def utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_check_on_a_folder_judges_with_the_workers_in_input_order(tmp_path: Path) -> None:
    paths = scene_files(tmp_path / "photos", 8)
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")  # a folder stands for its image files only
    config = tmp_path / "gateway.yaml"
    config.write_text("backend: classical\nprocessing: {workers: 4}\nmetrics: {enabled: false}\n")
    result = gateway_cli("check", "--json", "--config", str(config), str(tmp_path / "photos"))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["image_id"] for v in verdicts] == [p.name for p in paths]  # input order
    assert [v["verdict"] for v in verdicts] == ["accept", "recapture"] * 4
    spans = [(utc(v["received_at"]), utc(v["decided_at"])) for v in verdicts]
    overlapping = [
        (a, b) for a in range(8) for b in range(a + 1, 8) if spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
    ]
    assert overlapping, spans  # photos were judged at the same time, not one after the other


def test_check_shares_the_batcher_between_its_workers(tmp_path: Path) -> None:
    from gateway.check import judge_files
    from gateway.config import parse_config
    from gateway.judge import build_judge
    from tests.onnx_models import detector_and_classifier

    manifest = detector_and_classifier(tmp_path / "models")
    models = {"manifest": str(manifest), "max_batch": 4, "batch_wait_ms": 100}
    judge = build_judge(parse_config("", "<test>", {"backend": "onnxruntime", "models": models}))
    rows: list[int] = []
    judge.pipeline.slot.batches.subscribe(lambda _model, n: rows.append(n))
    paths = scene_files(tmp_path / "photos", 8)
    try:
        got = list(judge_files(judge, paths, workers=4))
    finally:
        judge.pipeline.slot.close()
    assert [path for path, _ in got] == paths
    assert [judged.verdict.image_id for _, judged in got if not isinstance(judged, OSError)] == [p.name for p in paths]
    assert max(rows) > 1, rows  # the batcher ran several files' photos in one inference


def test_check_annotations_of_same_named_files_do_not_overwrite_each_other(tmp_path: Path) -> None:
    a = write_photos(tmp_path / "a")
    b = write_photos(tmp_path / "b")
    result = gateway_cli("check", "--annotate", str(tmp_path / "out"), str(a[0]), str(b[0]), str(b[1]))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-blurred.jpg", "b-sharp-2.jpg", "b-sharp.jpg"]
