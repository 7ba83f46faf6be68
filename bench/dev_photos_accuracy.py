"""Accuracy and speed of a backend (default: what `backend: auto` picks) on the dev photos (../shared/data/cervix-dev)
and on synthetic cases.

Prints:

1. Focus: sharp vs blurry photos (unsure ones excluded, and shown apart), overall and per stage, with
   "not sharp" as the positive class: sensitivity, specificity, accuracy, each with a Wilson 95 % interval.
2. Focus on synthetic degradations of the sharp photos (Gaussian and disk defocus, motion blur, with noise
   and JPEG, with drawn marks and glints; and sharp controls), and on the sharp photos rescaled (the measure
   should not depend on resolution): the rate judged not sharp (or sharp, for the controls).
3. Cervix localisation: fraction with IoU >= 0.5 against the labelled box per stage (and mean IoU), next to
   a fixed central box for reference, and on 70 % corner crops (the cervix off-centre).
4. found rate on images without a cervix: synthetic ones (grey, charts, noise, textures) and, with
   ``--negatives DIR``, every photo in DIR (e.g. the scikit-image sample photos).
5. The synthetic colposcope scenes of ``gateway.scenes`` (wide views, a smaller cervix): localisation, found
   rate with and without a cervix, and focus under defocus, motion and cervix-only defocus.
6. Time per photo (locate + judge + exposure), mean and p95, at 800x600 and at 1024x768.

Usage: ``python bench/dev_photos_accuracy.py [--data DIR] [--negatives DIR] [--backend auto|classical|onnxruntime]``
(default ``auto``: the models of engines/manifest.yaml through ONNX Runtime when they are there).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import scenes
from gateway.assessment import Box, iou
from gateway.backends.base import Detector, FocusJudge
from gateway.backends.classical import ClassicalConfig, ClassicalDetector, ClassicalFocus
from gateway.exposure import ExposureConfig, check_exposure
from gateway.training.dataset import stage_group
from gateway.training.evaluate import wilson

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cervix-dev"
Image: TypeAlias = np.ndarray
Degrade: TypeAlias = Callable[[Image], Image]


@dataclass(frozen=True)
class Photo:
    name: str
    case: str
    stage: str
    focus: str
    box: Box | None
    image: Image


def load_photos(data: Path) -> list[Photo]:
    photos = []
    with (data / "labels.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            image = cv2.imread(str(data / row["file"]), cv2.IMREAD_COLOR)
            if image is None:
                raise SystemExit(f"cannot read {row['file']}")
            h, w = image.shape[:2]
            box: Box | None = None
            if row["x0"]:
                box = (float(row["x0"]) / w, float(row["y0"]) / h, float(row["x1"]) / w, float(row["y1"]) / h)
            photos.append(Photo(row["file"], row["case"], stage_group(row["stage"]), row["focus"], box, image))
    return photos


def rate(k: int, n: int) -> str:
    if n == 0:
        return "    -  (0/0)"
    lo, hi = wilson(k, n)
    return f"{k / n:5.2f} [{lo:.2f}-{hi:.2f}] ({k}/{n})"


class Assessor:
    """A backend as the pipeline runs it: classical, or what ``backend:`` picks (``auto``: the manifest's models)."""

    def __init__(self, backend: str = "classical") -> None:
        self.name = "classical"
        if backend == "classical":
            config = ClassicalConfig()
            self.detector: Detector = ClassicalDetector(config)
            self.focus: FocusJudge = ClassicalFocus(config)
        else:
            from gateway.backends.select import select_backend
            from gateway.config import load_config

            chosen = select_backend(load_config(None, {"backend": backend})).current
            self.detector, self.focus, self.name = chosen.detector, chosen.focus, chosen.name
        self.exposure = ExposureConfig()

    def sharp(self, image: Image) -> bool:
        cervix = self.detector.locate(image)
        return self.focus.judge(image, cervix.box if cervix.found else None).sharp_probability >= 0.5

    def timed(self, image: Image) -> float:
        """Seconds for locate + judge + exposure."""
        t0 = time.perf_counter()
        cervix = self.detector.locate(image)
        box = cervix.box if cervix.found else None
        self.focus.judge(image, box)
        check_exposure(image, box, self.exposure)
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- degradations


def _kernel_blur(image: Image, kernel: np.ndarray) -> Image:
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def disk(radius: int) -> Degrade:
    k = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
    cv2.circle(k, (radius, radius), radius, 1.0, -1)
    return lambda im: _kernel_blur(im, k)


def motion(length: int, diagonal: bool = False) -> Degrade:
    k = np.zeros((length, length), np.float32)
    if diagonal:
        cv2.line(k, (0, length - 1), (length - 1, 0), 1.0, 1)
    else:
        k[length // 2, :] = 1.0
    return lambda im: _kernel_blur(im, k)


def gaussian(sigma: float) -> Degrade:
    return lambda im: cv2.GaussianBlur(im, (0, 0), sigma)


def noise_jpeg(image: Image) -> Image:
    """Sensor-like noise (std 4) then JPEG quality 60."""
    rng = np.random.default_rng(0)
    noisy = np.clip(image.astype(np.float32) + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    decoded = cv2.imdecode(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
    assert decoded is not None
    return decoded


def marks_and_glints(image: Image) -> Image:
    """Crisp drawn marks (arrows, an outline, a timestamp) and specular glints, as added after capture."""
    rng = np.random.default_rng(1)
    out: Image = np.array(image, copy=True)
    h, w = out.shape[:2]
    for colour in ((255, 0, 0), (0, 255, 0), (0, 255, 255), (255, 255, 0)):
        x, y = int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h)
        cv2.arrowedLine(out, (x, y), (x + w // 20, y + h // 20), colour, 3, tipLength=0.4)
    cv2.putText(out, "X09  01:45", (int(0.3 * w), int(0.5 * h)), cv2.FONT_HERSHEY_SIMPLEX, w / 700, (0, 230, 230), 3)
    outline = np.array([[0.35 * w, 0.35 * h], [0.6 * w, 0.3 * h], [0.65 * w, 0.6 * h], [0.4 * w, 0.65 * h]], np.int32)
    cv2.polylines(out, [outline], True, (255, 60, 40), 2)
    for _ in range(40):
        centre = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
        axes = (int(rng.uniform(2, 8)), int(rng.uniform(1, 4)))
        cv2.ellipse(out, centre, axes, rng.uniform(0, 180), 0, 360, (255, 255, 255), -1)
    return out


def then(first: Degrade, second: Degrade) -> Degrade:
    def both(image: Image) -> Image:
        return second(first(image))

    return both


BLURS: dict[str, Degrade] = {
    "gaussian sigma 1.0": gaussian(1.0),
    "gaussian sigma 1.5": gaussian(1.5),
    "gaussian sigma 2.0": gaussian(2.0),
    "gaussian sigma 3.0": gaussian(3.0),
    "disk r 2": disk(2),
    "disk r 3": disk(3),
    "disk r 4": disk(4),
    "motion 7 px": motion(7),
    "motion 11 px": motion(11),
    "motion 15 px": motion(15),
    "motion 11 px diagonal": motion(11, diagonal=True),
    "gaussian 2.0 + noise + JPEG": then(gaussian(2.0), noise_jpeg),
    "gaussian 2.0 + marks + glints": then(gaussian(2.0), marks_and_glints),
    "disk r 3 + marks + glints": then(disk(3), marks_and_glints),
}
CONTROLS: dict[str, Degrade] = {
    "noise + JPEG": noise_jpeg,
    "marks + glints": marks_and_glints,
}


def rescale(long_side: int) -> Degrade:
    def f(im: Image) -> Image:
        h, w = im.shape[:2]
        s = long_side / max(h, w)
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        return cv2.resize(im, (round(w * s), round(h * s)), interpolation=interp)

    return f


# ------------------------------------------------------------------------------------------- negatives


def synthetic_negatives() -> dict[str, Image]:
    """Everyday images without a cervix: flat grey, charts, noise, textures, gradients, geometry."""
    rng = np.random.default_rng(0)
    out: dict[str, Image] = {}
    out["grey"] = np.full((600, 800, 3), 128, np.uint8)
    out["black"] = np.zeros((600, 800, 3), np.uint8)
    out["white"] = np.full((600, 800, 3), 255, np.uint8)
    chart = np.zeros((600, 800, 3), np.uint8)
    for i in range(6):
        for j in range(4):
            chart[j * 150 : (j + 1) * 150, i * 133 : (i + 1) * 133] = 20 + i * 40 + j * 8
    out["grey chart"] = chart
    colours = [(255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255), (0, 0, 255), (255, 0, 0)]
    bars = np.zeros((600, 800, 3), np.uint8)
    for i, c in enumerate(colours):
        bars[:, i * 115 : (i + 1) * 115] = c
    out["colour bars"] = bars
    checker = (np.indices((600, 800)).sum(axis=0) // 50 % 2 * 255).astype(np.uint8)
    out["checkerboard"] = cv2.cvtColor(checker, cv2.COLOR_GRAY2BGR)
    out["rgb noise"] = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    out["smooth rgb noise"] = cv2.GaussianBlur(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8), (0, 0), 3)
    grey_noise = rng.integers(0, 256, (600, 800), dtype=np.uint8)
    out["grey texture"] = cv2.cvtColor(cv2.GaussianBlur(grey_noise, (0, 0), 1.5), cv2.COLOR_GRAY2BGR)
    ramp = np.tile(np.linspace(0, 255, 800, dtype=np.float32), (600, 1)).astype(np.uint8)
    out["grey gradient"] = cv2.cvtColor(ramp, cv2.COLOR_GRAY2BGR)
    shapes = np.full((600, 800, 3), 200, np.uint8)
    for _ in range(25):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, 800)), int(rng.integers(0, 600)))
        cv2.circle(shapes, centre, int(rng.integers(10, 80)), colour, -1)
    out["random shapes"] = shapes
    page = np.full((600, 800, 3), 235, np.uint8)
    for y in range(60, 560, 30):
        cv2.putText(
            page, "Lorem ipsum dolor sit amet, consectetur", (40, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (30, 30, 30), 2
        )
    out["text page"] = page
    return out


def folder_images(folder: Path) -> dict[str, Image]:
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None and min(image.shape[:2]) >= 32:
                out[path.name] = image
    return out


# ------------------------------------------------------------------------------------------- reports


def focus_table(photos: list[Photo], judged_sharp: list[bool]) -> None:
    print("\n## 1. Focus on the dev photos (positive = not sharp; unsure excluded)")
    print(f"{'stage':8s} {'n':>4s}  {'sensitivity (blurry found)':30s} {'specificity (sharp kept)':30s} accuracy")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(photos):
        groups[p.stage].append(i)
        groups["all"].append(i)
    for group in sorted(groups, key=lambda g: (g == "all", g)):
        idx = groups[group]
        blurry = [i for i in idx if photos[i].focus == "blurry"]
        sharp = [i for i in idx if photos[i].focus == "sharp"]
        tp = sum(not judged_sharp[i] for i in blurry)
        tn = sum(judged_sharp[i] for i in sharp)
        print(
            f"{group:8s} {len(blurry) + len(sharp):4d}  {rate(tp, len(blurry)):30s} {rate(tn, len(sharp)):30s} "
            f"{rate(tp + tn, len(blurry) + len(sharp))}"
        )
    unsure = [i for i, p in enumerate(photos) if p.focus == "unsure"]
    k = sum(not judged_sharp[i] for i in unsure)
    print(f"unsure photos judged not sharp: {rate(k, len(unsure))}")


def degradation_table(assessor: Assessor, sharp_photos: list[Photo]) -> None:
    print(f"\n## 2. Focus on synthetic degradations of the {len(sharp_photos)} sharp photos (800 px wide)")
    images = [p.image for p in sharp_photos]
    print(f"{'degradation':34s} judged not sharp")
    for name, degrade in BLURS.items():
        k = sum(not assessor.sharp(degrade(im)) for im in images)
        print(f"{name:34s} {rate(k, len(images))}")
    print(f"{'sharp control':34s} judged sharp")
    controls: dict[str, Degrade] = {"none": lambda im: im, **CONTROLS}
    controls.update({f"rescaled to {n} px long side": rescale(n) for n in (600, 1200, 1600)})
    for name, degrade in controls.items():
        k = sum(assessor.sharp(degrade(im)) for im in images)
        print(f"{name:34s} {rate(k, len(images))}")
    print(f"{'blurred, then rescaled':34s} judged not sharp")
    for name, degrade in (
        ("gaussian 2.0, 1600 px", then(gaussian(2.0), rescale(1600))),
        ("disk r 3, 1200 px", then(disk(3), rescale(1200))),
    ):
        k = sum(not assessor.sharp(degrade(im)) for im in images)
        print(f"{name:34s} {rate(k, len(images))}")


def corner_crops(photo: Photo) -> Iterable[tuple[Image, Box]]:
    """70 % crops at the four corners that keep at least 10 % of the crop as labelled cervix."""
    assert photo.box is not None
    h, w = photo.image.shape[:2]
    for fx, fy in ((0.0, 0.0), (0.3, 0.0), (0.0, 0.3), (0.3, 0.3)):
        b = photo.box
        clipped = (
            min(max((b[0] - fx) / 0.7, 0.0), 1.0),
            min(max((b[1] - fy) / 0.7, 0.0), 1.0),
            min(max((b[2] - fx) / 0.7, 0.0), 1.0),
            min(max((b[3] - fy) / 0.7, 0.0), 1.0),
        )
        if (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) >= 0.1:
            crop = photo.image[round(fy * h) : round((fy + 0.7) * h), round(fx * w) : round((fx + 0.7) * w)]
            yield crop, clipped


def localisation_table(assessor: Assessor, photos: list[Photo]) -> None:
    print("\n## 3. Cervix localisation: IoU >= 0.5 with the labelled box (mean IoU)")
    central: Box = (0.1, 0.1, 0.9, 0.9)
    rows: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    crops: list[tuple[float, float]] = []
    for p in photos:
        if p.box is None:
            continue
        finding = assessor.detector.locate(p.image)
        got = iou(finding.box, p.box) if finding.box else 0.0
        for group in (p.stage, "all"):
            rows[group].append((got, iou(central, p.box), finding.found))
        for crop, truth in corner_crops(p):
            f = assessor.detector.locate(crop)
            crops.append((iou(f.box, truth) if f.box else 0.0, iou(central, truth)))
    print(f"{'stage':8s} {'n':>4s}  {assessor.name:30s} {'central box 10% margins':30s} found")
    for group in sorted(rows, key=lambda g: (g == "all", g)):
        r = rows[group]
        ours = sum(v[0] >= 0.5 for v in r)
        base = sum(v[1] >= 0.5 for v in r)
        found = sum(v[2] for v in r)
        mean_ours = statistics.fmean(v[0] for v in r)
        mean_base = statistics.fmean(v[1] for v in r)
        print(
            f"{group:8s} {len(r):4d}  {rate(ours, len(r))} {mean_ours:.2f}   {rate(base, len(r))} {mean_base:.2f}   "
            f"{found}/{len(r)}"
        )
    ours = sum(c[0] >= 0.5 for c in crops)
    base = sum(c[1] >= 0.5 for c in crops)
    print(
        f"{'crops':8s} {len(crops):4d}  {rate(ours, len(crops))} {statistics.fmean(c[0] for c in crops):.2f}   "
        f"{rate(base, len(crops))} {statistics.fmean(c[1] for c in crops):.2f}   (70 % corner crops)"
    )


def negatives_table(assessor: Assessor, sets: dict[str, dict[str, Image]]) -> None:
    print("\n## 4. Images without a cervix: found = True rate (lower is better)")
    for title, images in sets.items():
        found = [name for name, im in images.items() if assessor.detector.locate(im).found]
        print(f"{title}: {rate(len(found), len(images))}; found in: {', '.join(found) or 'none'}")


def scenes_table(assessor: Assessor, seeds: int = 16, width: int = 1600, height: int = 1200) -> None:
    print(f"\n## 5. Synthetic colposcope scenes (gateway.scenes, {width}x{height}, {seeds} seeds, stages in turn)")
    stages: tuple[scenes.Stage, ...] = ("saline", "acetic", "iodine", "green")
    px = width / 800  # blur sizes below are pixels at 800 px wide

    def render(seed: int, cervix: bool = True, blur: scenes.Blur = "none", blur_px: float = 0.0) -> Image:
        spec = scenes.SceneSpec(
            width=width, height=height, seed=seed, stage=stages[seed % 4], cervix=cervix, blur=blur, blur_px=blur_px
        )
        return scenes.render(spec).image

    hits = found = 0
    for seed in range(seeds):
        scene = scenes.render(scenes.SceneSpec(width=width, height=height, seed=seed, stage=stages[seed % 4]))
        finding = assessor.detector.locate(scene.image)
        found += finding.found
        hits += finding.box is not None and scene.cervix_box is not None and iou(finding.box, scene.cervix_box) >= 0.5
    print(f"with a cervix: found {rate(found, seeds)}; IoU >= 0.5 {rate(hits, seeds)}")
    walls = [not assessor.detector.locate(render(seed, cervix=False)).found for seed in range(0, 2 * seeds, 2)]
    desks = [not assessor.detector.locate(render(seed, cervix=False)).found for seed in range(1, 2 * seeds, 2)]
    print(f"no cervix, vaginal wall view: found = False {rate(sum(walls), seeds)}")
    print(f"no cervix, everyday desk scene: found = False {rate(sum(desks), seeds)}")
    cases: list[tuple[str, scenes.Blur, float]] = [
        ("sharp", "none", 0.0),
        ("defocus disk r 2", "defocus", 2 * px),
        ("defocus disk r 4", "defocus", 4 * px),
        ("motion 8 px", "motion", 8 * px),
        ("motion 16 px", "motion", 16 * px),
        ("cervix-only defocus r 4", "cervix_defocus", 4 * px),
    ]
    print(f"{'focus case (px at 800 wide)':28s} judged as expected (sharp / not sharp)")
    for name, blur, blur_px in cases:
        ok = sum(assessor.sharp(render(seed, blur=blur, blur_px=blur_px)) == (blur == "none") for seed in range(seeds))
        print(f"{name:28s} {rate(ok, seeds)}")


def timing_table(assessor: Assessor, photos: list[Photo]) -> None:
    print("\n## 6. Time per photo, locate + judge + exposure (ms)")
    for label, size in (("800x600 (as stored)", None), ("1024x768", (1024, 768))):
        times = []
        for p in photos:
            image = p.image if size is None else cv2.resize(p.image, size, interpolation=cv2.INTER_CUBIC)
            times.append(assessor.timed(image) * 1e3)
        times.sort()
        p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
        print(f"{label:22s} mean {statistics.fmean(times):5.1f}  p95 {p95:5.1f}  (n={len(times)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the cervix-dev folder")
    parser.add_argument("--negatives", type=Path, help="a folder of everyday photos without a cervix")
    parser.add_argument(
        "--backend", choices=["auto", "classical", "onnxruntime"], default="auto", help="as the config's backend:"
    )
    args = parser.parse_args(argv)
    if not (args.data / "labels.csv").exists():
        raise SystemExit(f"no labels.csv in {args.data}")
    photos = load_photos(args.data)
    assessor = Assessor(args.backend)
    print(f"# {assessor.name} backend on {len(photos)} dev photos ({len({p.case for p in photos})} patients)")
    if assessor.name != "classical":
        print("(the learned models were trained on 25 of these patients; `colpo-gateway evaluate`: held-out numbers)")
    print(
        "stage groups: saline, acetic (acetic acid, any view), green (green filter), lugol, other "
        "(speculum, SCJ, endocervical views)"
    )

    judged = [assessor.sharp(p.image) for p in photos]
    focus_table(photos, judged)
    degradation_table(assessor, [p for p in photos if p.focus == "sharp"])
    localisation_table(assessor, photos)
    sets = {"synthetic": synthetic_negatives()}
    if args.negatives:
        sets[str(args.negatives)] = folder_images(args.negatives)
    negatives_table(assessor, sets)
    scenes_table(assessor)
    timing_table(assessor, photos)


if __name__ == "__main__":
    main()
