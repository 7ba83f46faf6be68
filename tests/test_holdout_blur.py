"""The evaluation's independent blur generator: every family blurs, sizes stay in range, the cervix-only family
leaves the surroundings untouched, glints streak, draws repeat from their seed, and it shares no code with training."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.evaluation import holdout_blur as hb

ROOT = Path(__file__).resolve().parents[1]
BOX = (60.0, 40.0, 260.0, 200.0)
"""A cervix box 200 px wide in the 320 x 240 test image."""


def _texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(30, 220, (60, 80, 3)).astype(np.float32)
    fine = cv2.resize(base, (320, 240), interpolation=cv2.INTER_NEAREST)
    return np.clip(fine + rng.normal(0, 25, fine.shape), 0, 255).astype(np.uint8)


def _energy(image: np.ndarray, box: tuple[float, float, float, float] = BOX) -> float:
    """Variance of the Laplacian of the grey box's middle half."""
    x0, y0, x1, y1 = (round(v) for v in box)
    dx, dy = (x1 - x0) // 4, (y1 - y0) // 4
    grey = cv2.cvtColor(image[y0 + dy : y1 - dy, x0 + dx : x1 - dx], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@pytest.mark.parametrize("family", hb.BLURRED)
def test_each_family_blurs_measurably_even_at_its_mildest(family: hb.Family) -> None:
    image = _texture()
    lo, _ = hb.RANGES[family]
    label = hb.BlurLabel(family, lo * 200.0, 200.0, angle_deg=30.0, sweep_deg=90.0)
    out = hb.blur(image, BOX, label)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert _energy(out) < 0.6 * _energy(image)


def test_sharp_controls_keep_their_detail_through_capture() -> None:
    image = _texture()
    out = hb.degrade(image, BOX, "sharp", hb.stream(0, "t", 0)).image
    assert _energy(out) > 0.8 * _energy(image)


def test_cervix_only_blur_leaves_everything_outside_the_cervix_unchanged() -> None:
    image = _texture(1)
    label = hb.BlurLabel("cervix_disk", 0.03 * 200, 200.0, highlight_gain=3.0)
    out = hb.blur(image, BOX, label)
    weight = hb.cervix_weight(image.shape[:2], BOX)
    outside = weight <= 0
    assert outside.sum() > 0.4 * outside.size
    assert np.array_equal(out[outside], image[outside])
    inner = (60 + 70, 40 + 55, 260 - 70, 200 - 55)
    assert _energy(out, inner) < 0.3 * _energy(image, inner)
    x0, y0, x1, y1 = (round(v) for v in BOX)
    for side in (np.s_[:y0], np.s_[y1:], np.s_[:, :x0], np.s_[:, x1:]):
        assert np.array_equal(out[side], image[side])


@pytest.mark.parametrize("family", hb.BLURRED)
def test_draws_stay_in_their_ranges(family: hb.Family) -> None:
    lo, hi = hb.RANGES[family]
    labels = [hb.sample(family, 480.0, hb.stream(3, "range", i)) for i in range(300)]
    fractions = [label.fraction for label in labels]
    assert all(lo <= f <= hi for f in fractions)
    assert min(fractions) < lo * 1.15 and max(fractions) > hi / 1.15  # the range is covered
    assert all(label.extent_px == pytest.approx(label.fraction * 480.0) for label in labels)
    assert all(label.blur_type == ("motion" if "motion" in family else "defocus") for label in labels)
    angles = [label.angle_deg for label in labels]
    assert min(angles) < 30 and max(angles) > 330  # any angle
    if family == "arc_motion":
        assert all(hb.ARC_SWEEP_DEG[0] <= label.sweep_deg <= hb.ARC_SWEEP_DEG[1] for label in labels)


def _second_moment(kernel: np.ndarray, axis_deg: float) -> float:
    """Variance of the kernel's mass along the direction ``axis_deg``."""
    h, w = kernel.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = math.radians(axis_deg)
    t = xx * math.cos(a) + yy * math.sin(a)
    mean = float((kernel * t).sum())
    return float((kernel * (t - mean) ** 2).sum())


def test_kernels_have_the_size_their_label_says() -> None:
    sigma = 2.5
    taps = hb.gaussian_taps(sigma)
    x = np.arange(len(taps)) - len(taps) // 2
    assert float((taps * x * x).sum()) == pytest.approx(sigma**2 + 1 / 12, rel=0.02)
    disk = hb.disk_psf(8.0)
    assert _second_moment(disk, 0.0) == pytest.approx(8.0**2 / 4, rel=0.06)
    line = hb.line_psf(30.0, 60.0)
    assert line.sum() == pytest.approx(1.0, abs=1e-5)
    assert _second_moment(line, 60.0) == pytest.approx(30.0**2 / 12, rel=0.05)
    assert _second_moment(line, 150.0) < 0.5  # one pixel wide across the motion
    arc = hb.arc_psf(30.0, 180.0, 0.0)
    assert arc.sum() == pytest.approx(1.0, abs=1e-5)
    # a half circle of length 30 has radius 30/pi: its chord spans 2r along x and it bulges r along y
    assert _second_moment(arc, 90.0) > 4.0 and _second_moment(arc, 0.0) > 4.0
    assert np.count_nonzero(arc > 1e-4) < 0.2 * arc.size  # a thin curve, not a blob


def test_glints_streak_saturated_as_through_a_lens() -> None:
    image = np.full((120, 200, 3), 70, np.uint8)
    image[58:62, 98:102] = 255
    label = hb.BlurLabel("linear_motion", 24.0, 200.0, angle_deg=0.0, highlight_gain=4.0)
    out = hb.blur(image, (0.0, 0.0, 200.0, 120.0), label)
    streak = out[60, 90:110].astype(np.float64)
    # averaging the sRGB levels would give 70 + 185 * 4 / 24, about 101; in radiance the streak stays bright
    assert streak.mean() > 160
    assert out[60, 20] == pytest.approx(70, abs=1) and out[20, 100, 0] == pytest.approx(70, abs=1)


def test_draws_repeat_from_their_seed_and_differ_between_draws() -> None:
    image = _texture(2)
    first = hb.draws(image, BOX, seed=5, key="AAAA_1.jpg", count=10)
    again = hb.draws(image, BOX, seed=5, key="AAAA_1.jpg", count=10)
    assert [d.label for d in first] == [d.label for d in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert [d.label.family for d in first] == list(hb.BLURRED) * 2
    assert first[0].label != first[5].label
    other = hb.draws(image, BOX, seed=6, key="AAAA_1.jpg", count=10)
    assert all(a.label != b.label for a, b in zip(first, other, strict=True))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_generator_shares_no_code_with_training_and_training_never_uses_it() -> None:
    own = _imports(ROOT / "gateway" / "evaluation" / "holdout_blur.py")
    assert not {n for n in own if n.startswith("gateway")}, own
    for path in (ROOT / "gateway" / "training").glob("*.py"):
        if path.name == "evaluate.py":
            continue
        assert not {n for n in _imports(path) if n.startswith("gateway.evaluation")}, path.name
