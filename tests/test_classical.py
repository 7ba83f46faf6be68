"""The classical backend on real image arrays: colposcope-like synthetic views, everyday non-cervix images,
degenerate inputs and (when present) the dev photos."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from gateway.assessment import Box, iou
from gateway.backends.classical import ClassicalConfig, ClassicalDetector, ClassicalFocus

CONFIG = ClassicalConfig()
DETECTOR = ClassicalDetector(CONFIG)
FOCUS = ClassicalFocus(CONFIG)
DEV_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cervix-dev"

# Tissue colours (BGR) of the examination stages.
STAGES = {
    "saline": (140, 130, 220),
    "acetic": (205, 200, 240),
    "lugol": (40, 110, 200),
    "green": (175, 185, 150),
}
CENTRAL: Box = (0.28, 0.22, 0.72, 0.78)


def colposcope(
    width: int = 800,
    height: int = 600,
    tissue: tuple[int, int, int] = STAGES["saline"],
    box: Box = CENTRAL,
    seed: int = 0,
) -> np.ndarray:
    """A colposcope-like view: a textured tissue ellipse filling ``box``, with vessels and glints, in a dark
    canal between two grey speculum blades.  Laid out in frame units, so every size shows the same scene."""
    rng = np.random.default_rng(seed)
    s = width / 800
    img = np.empty((height, width, 3), np.float32)
    img[:] = (30, 30, 70)
    blade = height // 9
    img[:blade] = (150, 150, 150)
    img[-blade:] = (135, 135, 135)
    x0, y0, x1, y1 = box
    centre = (round((x0 + x1) / 2 * width), round((y0 + y1) / 2 * height))
    axes = (round((x1 - x0) / 2 * width), round((y1 - y0) / 2 * height))
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    fine = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 0.8 * s)
    coarse = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 6 * s)
    shade = 1 + 0.06 * fine / fine.std() + 0.05 * coarse / coarse.std()
    cervix = np.array(tissue, np.float32) * shade[..., None]
    for _ in range(25):  # vessels
        points = [centre]
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(6):
            angle += rng.normal(0, 0.5)
            px, py = points[-1]
            points.append((round(px + 15 * s * math.cos(angle)), round(py + 15 * s * math.sin(angle))))
        cv2.polylines(cervix, [np.array(points, np.int32)], False, (60, 50, 150), max(1, round(s)))
    img = np.where(mask[..., None] > 0, cervix, img)
    for _ in range(25):  # specular glints
        a, r = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 0.8))
        p = (round(centre[0] + r * axes[0] * math.cos(a)), round(centre[1] + r * axes[1] * math.sin(a)))
        size = (max(1, round(3 * s)), max(1, round(2 * s)))
        cv2.ellipse(img, p, size, rng.uniform(0, 180), 0, 360, (255, 255, 255), -1)
    out = cv2.GaussianBlur(img, (0, 0), 0.5 * s) + rng.normal(0, 1.5, img.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def sharp_probability(image: np.ndarray) -> float:
    cervix = DETECTOR.locate(image)
    return FOCUS.judge(image, cervix.box if cervix.found else None).sharp_probability


def motion(image: np.ndarray, length: int) -> np.ndarray:
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def disk(image: np.ndarray, radius: int) -> np.ndarray:
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
    cv2.circle(kernel, (radius, radius), radius, 1.0, -1)
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def draw_marks(image: np.ndarray) -> np.ndarray:
    """Crisp marks drawn after capture: arrows, a lesion outline, a timestamp, white glints."""
    out: np.ndarray = np.array(image, copy=True)
    for i, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 255, 255), (255, 255, 0))):
        cv2.arrowedLine(out, (300 + 50 * i, 220 + 40 * i), (340 + 50 * i, 250 + 40 * i), colour, 3, tipLength=0.4)
    cv2.polylines(out, [np.array([[280, 210], [480, 190], [520, 380], [300, 400]], np.int32)], True, (255, 60, 40), 2)
    cv2.putText(out, "X09  01:45", (260, 320), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (0, 230, 230), 3)
    rng = np.random.default_rng(3)
    for _ in range(40):
        centre = (int(rng.integers(260, 540)), int(rng.integers(160, 440)))
        cv2.ellipse(out, centre, (int(rng.integers(2, 8)), int(rng.integers(1, 4))), 0, 0, 360, (255, 255, 255), -1)
    return out


# ------------------------------------------------------------------------------------------- locating


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("box", [CENTRAL, (0.05, 0.1, 0.5, 0.7), (0.4, 0.3, 0.65, 0.6)])
def test_locates_the_cervix_in_every_stage(stage: str, box: Box) -> None:
    finding = DETECTOR.locate(colposcope(tissue=STAGES[stage], box=box))
    assert finding.found and finding.box is not None
    assert 0.5 < finding.score <= 1.0
    assert iou(finding.box, box) >= 0.7
    assert all(0.0 <= v <= 1.0 for v in finding.box)


@pytest.mark.parametrize("size", [(640, 480), (1024, 768), (4000, 3000)])
def test_locating_does_not_depend_on_resolution(size: tuple[int, int]) -> None:
    finding = DETECTOR.locate(colposcope(*size))
    assert finding.found and finding.box is not None and iou(finding.box, CENTRAL) >= 0.8


def _everyday_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    chart = np.zeros((600, 800, 3), np.uint8)
    for i in range(6):
        chart[:, i * 133 : (i + 1) * 133] = 20 + 40 * i
    checker = (np.indices((600, 800)).sum(axis=0) // 50 % 2 * 255).astype(np.uint8)
    page = np.full((600, 800, 3), 235, np.uint8)
    for y in range(60, 560, 30):
        cv2.putText(page, "Lorem ipsum dolor sit amet", (40, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (30, 30, 30), 2)
    ramp = np.tile(np.linspace(0, 255, 800, dtype=np.float32), (600, 1)).astype(np.uint8)
    return {
        "grey": np.full((600, 800, 3), 128, np.uint8),
        "black": np.zeros((600, 800, 3), np.uint8),
        "white": np.full((600, 800, 3), 255, np.uint8),
        "grey chart": chart,
        "checkerboard": cv2.cvtColor(checker, cv2.COLOR_GRAY2BGR),
        "rgb noise": rng.integers(0, 256, (600, 800, 3), dtype=np.uint8),
        "smooth rgb noise": cv2.GaussianBlur(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8), (0, 0), 3),
        "text page": page,
        "grey gradient": cv2.cvtColor(ramp, cv2.COLOR_GRAY2BGR),
    }


@pytest.mark.parametrize("name", list(_everyday_images()))
def test_everyday_images_have_no_cervix(name: str) -> None:
    finding = DETECTOR.locate(_everyday_images()[name])
    assert not finding.found and finding.score < CONFIG.min_found_score


# ------------------------------------------------------------------------------------------- focus


@pytest.mark.parametrize("stage", STAGES)
def test_sharp_and_blurred_views(stage: str) -> None:
    image = colposcope(tissue=STAGES[stage])
    assert sharp_probability(image) > 0.9
    assert sharp_probability(cv2.GaussianBlur(image, (0, 0), 2.5)) < 0.1
    assert sharp_probability(disk(image, 4)) < 0.1
    assert sharp_probability(motion(image, 15)) < 0.5


def test_measure_falls_with_blur() -> None:
    image = colposcope()
    measures = [FOCUS.measure(image, CENTRAL)]
    measures += [FOCUS.measure(cv2.GaussianBlur(image, (0, 0), s), CENTRAL) for s in (1.0, 2.0, 3.0, 4.0)]
    assert measures == sorted(measures, reverse=True)
    assert measures[0] > 3 * measures[2]


def test_focus_is_judged_at_a_fixed_physical_scale() -> None:
    small, large = colposcope(800, 600), colposcope(1600, 1200)
    assert FOCUS.measure(large, CENTRAL) == pytest.approx(FOCUS.measure(small, CENTRAL), rel=0.35)
    # The same physical blur is twice as many pixels at twice the resolution.
    blurred_small = FOCUS.measure(cv2.GaussianBlur(small, (0, 0), 2.0), CENTRAL)
    blurred_large = FOCUS.measure(cv2.GaussianBlur(large, (0, 0), 4.0), CENTRAL)
    assert blurred_large == pytest.approx(blurred_small, rel=0.35)
    # A small cervix in a wide view is resampled up to the same scale as a close-up.
    wide = colposcope(1600, 1200, box=(0.4, 0.35, 0.62, 0.65))
    assert sharp_probability(wide) > 0.7
    assert sharp_probability(cv2.GaussianBlur(wide, (0, 0), 2.0)) < 0.5


def test_drawn_marks_and_glints_do_not_make_a_blurred_view_sharp() -> None:
    blurred = cv2.GaussianBlur(colposcope(), (0, 0), 2.5)
    marked = draw_marks(blurred)
    assert FOCUS.measure(marked, CENTRAL) < 1.3 * FOCUS.measure(blurred, CENTRAL)
    assert sharp_probability(marked) < 0.5
    assert sharp_probability(draw_marks(colposcope())) > 0.9


def test_noise_and_jpeg_do_not_make_a_blurred_view_sharp() -> None:
    blurred = cv2.GaussianBlur(colposcope(), (0, 0), 2.5)
    rng = np.random.default_rng(0)
    noisy = np.clip(blurred + rng.normal(0, 5, blurred.shape), 0, 255).astype(np.uint8)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], cv2.IMREAD_COLOR)
    assert jpeg is not None and sharp_probability(jpeg) < 0.5


def test_no_box_judges_the_centre() -> None:
    sharp = colposcope()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3.0)
    sharp_centre = blurred.copy()
    sharp_centre[150:450, 200:600] = sharp[150:450, 200:600]
    blurred_centre = sharp.copy()
    blurred_centre[150:450, 200:600] = blurred[150:450, 200:600]
    assert FOCUS.judge(sharp_centre, None).sharp_probability > 0.9
    assert FOCUS.judge(blurred_centre, None).sharp_probability < 0.1


def test_probability_is_calibrated_on_the_threshold() -> None:
    image = cv2.GaussianBlur(colposcope(), (0, 0), 1.5)
    measure = FOCUS.measure(image, CENTRAL)
    at = ClassicalFocus(ClassicalConfig(focus_threshold=measure)).judge(image, CENTRAL)
    assert at.measure == pytest.approx(measure)
    assert at.sharp_probability == pytest.approx(0.5)
    soft = ClassicalConfig(focus_threshold=measure / 1.5, focus_softness=1.0)
    hard = ClassicalConfig(focus_threshold=measure / 1.5, focus_softness=0.1)
    p_soft = ClassicalFocus(soft).judge(image, CENTRAL).sharp_probability
    p_hard = ClassicalFocus(hard).judge(image, CENTRAL).sharp_probability
    assert 0.5 < p_soft < p_hard <= 1.0


# ------------------------------------------------------------------------------------------- robustness

DEGENERATE = {
    "1x1": np.zeros((1, 1, 3), np.uint8),
    "7x7": np.full((7, 7, 3), 200, np.uint8),
    "8x8": np.full((8, 8, 3), 90, np.uint8),
    "1x1000": np.full((1, 1000, 3), 128, np.uint8),
    "1000x2": np.full((1000, 2, 3), 128, np.uint8),
    "16x4000 noise": np.random.default_rng(0).integers(0, 256, (16, 4000, 3), dtype=np.uint8),
    "black": np.zeros((600, 800, 3), np.uint8),
    "white": np.full((600, 800, 3), 255, np.uint8),
    "uniform pink": np.full((600, 800, 3), (140, 130, 220), np.uint8),
    "uniform dark": np.full((600, 800, 3), 3, np.uint8),
    "noise": np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8),
    "non-contiguous": colposcope()[::2, ::-3],
}
BOXES: list[Box | None] = [
    None,
    (0.0, 0.0, 1.0, 1.0),
    (0.5, 0.5, 0.5, 0.5),
    (0.9, 0.9, 0.1, 0.1),
    (-5.0, -5.0, 5.0, 5.0),
]
BOXES += [(math.nan, 0.0, 1.0, 1.0), (0.0, 0.0, math.inf, 1.0), (0.999, 0.999, 1.0, 1.0)]


@pytest.mark.parametrize("name", DEGENERATE)
def test_never_raises(name: str) -> None:
    image = DEGENERATE[name]
    finding = DETECTOR.locate(image)
    assert 0.0 <= finding.score <= 1.0
    assert finding.found == (finding.score >= CONFIG.min_found_score)
    for box in [*BOXES, finding.box]:
        focus = FOCUS.judge(image, box)
        assert 0.0 <= focus.sharp_probability <= 1.0
        assert math.isfinite(focus.measure) and focus.measure >= 0.0


def test_flat_images_are_not_sharp() -> None:
    for name in ("black", "white", "uniform pink"):
        assert FOCUS.judge(DEGENERATE[name], None).sharp_probability == 0.0


def test_config_is_strict_frozen_and_documented() -> None:
    with pytest.raises(ValidationError):
        ClassicalConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ClassicalConfig(focus_threshold=0)
    with pytest.raises(ValidationError):
        CONFIG.focus_threshold = 1.0
    assert all(field.description for field in ClassicalConfig.model_fields.values())
    assert ClassicalConfig.model_validate(CONFIG.model_dump()) == CONFIG


# ------------------------------------------------------------------------------------------- dev photos


def _dev_photos() -> list[tuple[dict[str, str], np.ndarray]]:
    if not (DEV_PHOTOS / "labels.csv").exists():
        pytest.skip(f"dev photos absent: {DEV_PHOTOS}")
    with (DEV_PHOTOS / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    photos = []
    for row in rows:
        image = cv2.imread(str(DEV_PHOTOS / row["file"]), cv2.IMREAD_COLOR)
        assert image is not None, row["file"]
        photos.append((row, image))
    return photos


@pytest.mark.dev_photos
def test_dev_photos_focus_and_localisation() -> None:
    photos = _dev_photos()
    sharp_kept, blurry_measures, sharp_measures, hits, found = 0, [], [], 0, 0
    for row, image in photos:
        h, w = image.shape[:2]
        truth = (float(row["x0"]) / w, float(row["y0"]) / h, float(row["x1"]) / w, float(row["y1"]) / h)
        cervix = DETECTOR.locate(image)
        focus = FOCUS.judge(image, cervix.box if cervix.found else None)
        found += cervix.found
        hits += cervix.box is not None and iou(cervix.box, truth) >= 0.5
        if row["focus"] == "sharp":
            sharp_kept += focus.sharp_probability >= 0.5
            sharp_measures.append(focus.measure)
        elif row["focus"] == "blurry":
            blurry_measures.append(focus.measure)
    assert found >= 0.95 * len(photos)
    assert hits >= 0.8 * len(photos)
    assert sharp_kept >= 0.9 * len(sharp_measures)
    assert np.median(blurry_measures) < 0.7 * np.median(sharp_measures)


@pytest.mark.dev_photos
def test_dev_photos_synthetic_defocus_is_caught() -> None:
    sharp = [image for row, image in _dev_photos() if row["focus"] == "sharp"][::3]
    caught = sum(sharp_probability(cv2.GaussianBlur(image, (0, 0), 3.0)) < 0.5 for image in sharp)
    assert caught >= 0.9 * len(sharp)
