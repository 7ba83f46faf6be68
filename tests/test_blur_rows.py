"""``evaluate``'s independent-blur rows: the baseline's threshold and equal-specificity comparison, the verdict
counts (the borderline band counted as the accept it is), blur type read from the verdict when it carries one,
and an end-to-end run of ``colpo-gateway evaluate`` on a small labelled set with the committed models."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway import scenes
from gateway.cli import main
from gateway.evaluation import blur_rows as br
from gateway.evaluation import holdout_blur as hb
from gateway.training import dataset

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "engines" / "manifest.yaml"


def test_best_accuracy_threshold_splits_the_classes() -> None:
    assert br.best_accuracy_threshold([6.0, 7.0, 8.0], [1.0, 2.0, 5.0]) == pytest.approx(5.5)
    # one sharp photo below every blurred one cannot be saved: the cut still keeps the other five right
    t = br.best_accuracy_threshold([0.5, 6.0, 7.0, 8.0], [1.0, 2.0, 5.0])
    assert 5.0 < t < 6.0


def test_recall_at_specificity_keeps_as_many_sharp_photos() -> None:
    sharp = [float(v) for v in range(1, 11)]
    blurred = [0.5, 1.5, 2.5, 11.0]
    assert br.recall_at_specificity(sharp, blurred, 1.0) == pytest.approx(0.25)  # t = 1: none of the sharp lost
    assert br.recall_at_specificity(sharp, blurred, 0.9) == pytest.approx(0.5)  # t = 2: one sharp may go
    assert br.recall_at_specificity(sharp, blurred, 0.0) == pytest.approx(1.0)  # everything called blurred
    assert math.isnan(br.recall_at_specificity([], blurred, 0.9))


def test_the_baseline_sees_the_whole_frame_at_800_px() -> None:
    spec = scenes.SceneSpec(1600, 1200, seed=4, noise=0.0)
    big = scenes.render(spec).image
    small = cv2.resize(big, (800, 600), interpolation=cv2.INTER_AREA)
    assert br.whole_frame_laplacian(big) == pytest.approx(br.whole_frame_laplacian(small), abs=1e-3)
    direct = math.log1p(float(cv2.Laplacian(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()))
    assert br.whole_frame_laplacian(small) == pytest.approx(direct)


def _item(family: str, verdict: str, reasons: tuple[str, ...], p: float, lap: float) -> br.Judgement:
    blur_type = hb.BLUR_TYPE[family] if family != "sharp" else None  # type: ignore[index]
    return br.Judgement("atlas", family, "x.jpg", blur_type, 0.01, verdict, reasons, p, lap)


def test_verdicts_are_counted_as_the_device_sees_them() -> None:
    report = br.HoldoutReport(draws=8, photos=1, thresholds={"atlas": 3.0})
    report.items = [
        _item("sharp", "accept", (), 0.9, 5.0),
        _item("sharp", "accept", ("borderline_focus",), 0.45, 4.0),
        _item("sharp", "recapture", ("out_of_focus",), 0.2, 2.5),
        _item("sharp", "accept", (), 0.8, 6.0),
        _item("disk", "recapture", ("out_of_focus",), 0.1, 2.0),
        _item("disk", "accept", ("borderline_focus",), 0.45, 2.2),  # through: counted as accepted
        _item("disk", "recapture", ("cervix_not_found",), 0.7, 3.5),  # recaptured, but not for focus
        _item("linear_motion", "accept", (), 0.9, 1.0),
    ]
    s = report.summary("atlas")
    assert s["model_specificity"] == pytest.approx(0.75)
    disk = s["rows"]["disk"]
    assert (disk["model"]["k"], disk["model"]["n"]) == (1, 3)
    assert disk["recapture"]["k"] == 2 and disk["accept_borderline"]["k"] == 1 and disk["accept"]["k"] == 0
    assert disk["laplacian_fitted"]["k"] == 2
    # equal specificity (75 % of 4 sharp: one may fall below): t = 4.0, so disk laplacians 2.0, 2.2, 3.5 all found
    assert disk["laplacian_at_model_specificity"]["rate"] == pytest.approx(1.0)
    # the other way: the fitted baseline (t = 3.0) keeps 3 of 4 sharp; the model's probability may lose one sharp
    # photo (0.2), so it calls blurred below 0.45: 0.1 only (0.45 and 0.7 stay above)
    assert s["laplacian_specificity"] == pytest.approx(0.75)
    assert disk["model_at_laplacian_specificity"]["rate"] == pytest.approx(1 / 3)
    lo, hi = disk["model"]["ci"]
    assert 0.0 < lo < 1 / 3 < hi < 1.0
    everything = s["rows"]["all blurred"]
    assert everything["n"] == 4 and everything["accept"]["k"] == 1
    sharp = s["rows"]["sharp"]
    assert sharp["accept"]["k"] == 2 and sharp["accept_borderline"]["k"] == 1 and sharp["recapture"]["k"] == 1
    # the contract has the blur types (motion_blur, defocus): a blurred verdict without one is a wrong type
    assert (disk["blur_type_right"]["k"], disk["blur_type_right"]["n"]) == (0, 3)
    json.dumps(report.to_json())


def test_blur_type_is_read_from_the_verdict_when_it_carries_one() -> None:
    report = br.HoldoutReport(draws=8, photos=1, thresholds={"atlas": 3.0})
    report.items = [
        _item("sharp", "accept", (), 0.9, 5.0),
        _item("linear_motion", "recapture", ("out_of_focus", "motion_blur"), 0.1, 2.0),
        _item("arc_motion", "recapture", ("out_of_focus", "defocus"), 0.1, 2.0),
        _item("cervix_disk", "recapture", ("out_of_focus", "defocus"), 0.1, 2.0),
        _item("gaussian", "recapture", ("out_of_focus",), 0.1, 2.0),
    ]
    rows = report.summary("atlas")["rows"]
    assert rows["linear_motion"]["blur_type_right"]["k"] == 1
    assert rows["arc_motion"]["blur_type_right"]["k"] == 0
    assert rows["cervix_disk"]["blur_type_right"]["k"] == 1  # confined to the cervix counts as defocus
    assert rows["all blurred"]["blur_type_right"]["k"] == 2 and rows["all blurred"]["blur_type_right"]["n"] == 4
    assert rows["all blurred"]["blur_type_right_of_typed"]["n"] == 3
    assert "n/a" not in report.table()


def test_the_independent_generator_chooses_no_threshold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the independent generator was used to fit the baseline")

    for name in ("blur", "degrade", "draws", "sample", "finish", "stream"):
        monkeypatch.setattr(hb, name, forbidden)
    photos = dataset.load_photos(_labelled_set(tmp_path, patients=2))
    for source in br.SOURCES:
        assert math.isfinite(br.fit_baseline(photos, source, seed=0))


def _labelled_set(folder: Path, patients: int = 4) -> Path:
    """Scene photos as a labelled set: one sharp photo per patient P1.., and a blurry one of patient PB."""
    rows = []
    specs = [(f"P{i}", scenes.SceneSpec(800, 600, seed=20 + i, noise=1.5), "sharp") for i in range(1, patients + 1)]
    specs.append(("PB", scenes.SceneSpec(800, 600, seed=40, blur="defocus", blur_px=5.0), "blurry"))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for case, spec, focus in specs:
        scene = scenes.render(spec)
        assert scene.cervix_box is not None
        name = f"images/{case}_1_After_acetic_acid.jpg"
        (folder / name).write_bytes(scenes.encode_jpeg(scene.image, 92))
        x0, y0, x1, y1 = scene.cervix_box
        box = [round(x0 * 800), round(y0 * 600), round(x1 * 800), round(y1 * 600)]
        rows.append([name, case, "After_acetic_acid", 800, 600, *box, "full", focus, "no"])
    with (folder / "labels.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            ["file", "case", "stage", "width", "height", "x0", "y0", "x1", "y1", "visible", "focus", "overlay"]
        )
        out.writerows(rows)
    return folder


def test_evaluate_prints_the_independent_rows_beside_the_baseline(tmp_path: Path) -> None:
    data = _labelled_set(tmp_path / "data")
    out = tmp_path / "report.json"
    args = ["evaluate", "--data", str(data), "--manifest", str(MANIFEST), "--draws", "8", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=1800, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert "#### atlas" in text and "#### device-like" in text and "real blurry" in text
    report = json.loads(out.read_text())["independent_blur"]
    split = dataset.patient_split(dataset.load_photos(data), seed=0)
    assert report["baseline_fitted_on"] == list(split.train)
    assert not set(report["baseline_fitted_on"]) & set(split.validation)
    held_sharp = [c for c in split.validation if c != "PB"]
    assert report["photos"] == len(held_sharp) == 1
    items = report["items"]
    atlas = [i for i in items if i["source"] == "atlas"]
    device = [i for i in items if i["source"] == "device-like"]
    assert sum(i["family"] != "sharp" for i in atlas) == 8 and sum(i["family"] == "sharp" for i in atlas) == 3
    assert sum(i["family"] != "sharp" for i in device) == 8 and sum(i["family"] == "sharp" for i in device) == 2
    assert {i["family"] for i in items if i["family"] != "sharp"} == set(hb.BLURRED)
    assert all(i["verdict"] in ("accept", "recapture") for i in items)
    assert all(0.0 <= i["sharp_probability"] <= 1.0 for i in items)
    for source in ("atlas", "device-like"):
        rows = report["sources"][source]["rows"]
        assert rows["all blurred"]["n"] == 8
        assert rows["all blurred"]["model"]["rate"] > 0.5  # the committed models do catch most of it
        assert math.isfinite(report["sources"][source]["laplacian_threshold"])


def test_evaluate_refuses_fewer_than_eight_draws(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(tmp_path), "--draws", "4"])


def test_fixture_images_are_real_jpegs(tmp_path: Path) -> None:
    data = _labelled_set(tmp_path, patients=1)
    image = cv2.imread(str(next((data / "images").iterdir())), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (600, 800, 3) and np.std(image) > 10
