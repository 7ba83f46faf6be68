"""``evaluate`` shows progress from its first second: before loading the models and photos, and while it fits the
variance-of-Laplacian baseline (before, its first line came only once all of that was done)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway.progress import BuildProgress
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.training.dataset import Photo
from gateway.training.evaluate import evaluate, fit_laplacian
from tests.onnx_models import detector_and_classifier


def test_progress_is_shown_before_anything_slow(tmp_path: Path) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    stream = io.StringIO()
    progress = BuildProgress("evaluate", interactive=True, stream=stream)
    with pytest.raises(FileNotFoundError):  # no labels.csv: it stops while loading the photos
        evaluate(tmp_path / "no-photos-here", manifest, progress=progress)
    assert progress.lines and "prepare 1/3" in progress.lines[-1]  # the models were loaded, and it said so
    assert "prepare 0/3" in progress.lines[0] and stream.getvalue().startswith("\revaluate [")


def test_the_baseline_fit_reports_each_photo(tmp_path: Path) -> None:
    photos = []
    for n in range(3):
        path = tmp_path / f"p{n}.jpg"
        path.write_bytes(encode_jpeg(render(SceneSpec(width=320, height=240, seed=n)).image))
        photos.append(Photo(path, f"case{n}", "saline", "sharp", (0.25, 0.25, 0.75, 0.75), False))
    progress = BuildProgress("evaluate", interactive=True, stream=io.StringIO())
    progress.phase_start("prepare", None, 3)
    fit_laplacian(photos, seed=0, variants=2, progress=progress)
    progress.phase_finish("prepare")
    baseline = [line for line in progress.lines if "baseline" in line]
    assert [line.split("baseline ")[1] for line in baseline] == ["0/3", "0/3", "1/3", "2/3"]
    assert progress.lines[-1].endswith("prepare done")
