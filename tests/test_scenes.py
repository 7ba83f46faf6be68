"""Tests for the synthetic colposcope scene generator (gateway.scenes)."""

from __future__ import annotations

import dataclasses
from functools import cache

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from gateway.assessment import iou
from gateway.scenes import Scene, SceneSpec, Stage, encode_jpeg, render, standard_set

W, H = 800, 600  # small enough to keep the suite quick on two shared cores

Mask = npt.NDArray[np.bool_]


@cache
def _render(spec: SceneSpec) -> Scene:
    return render(spec)


def _gray(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)


def _box_px(scene: Scene) -> tuple[int, int, int, int]:
    assert scene.cervix_box is not None
    h, w = scene.image.shape[:2]
    x0, y0, x1, y1 = scene.cervix_box
    return int(x0 * w), int(y0 * h), int(np.ceil(x1 * w)), int(np.ceil(y1 * h))


def _ellipse_dist(scene: Scene) -> npt.NDArray[np.float64]:
    """Normalised elliptical distance from the box centre (1 on the ellipse inscribed in the box)."""
    assert scene.cervix_box is not None
    h, w = scene.image.shape[:2]
    x0, y0, x1, y1 = scene.cervix_box
    cx, cy, hw, hh = (x0 + x1) / 2 * w, (y0 + y1) / 2 * h, (x1 - x0) / 2 * w, (y1 - y0) / 2 * h
    yy, xx = np.mgrid[0:h, 0:w]
    return np.asarray(np.hypot((xx - cx) / hw, (yy - cy) / hh))


def _lap_var(img: npt.NDArray[np.uint8], where: Mask | tuple[int, int, int, int]) -> float:
    lap = cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F)
    if isinstance(where, tuple):
        x0, y0, x1, y1 = where
        return float(lap[y0:y1, x0:x1].var())
    return float(lap[where].var())


# ------------------------------------------------------------------------------------------- basics


@pytest.mark.parametrize("size", [(W, H), (1600, 1200), (333, 250), (250, 333)])
def test_shape_dtype_and_box(size: tuple[int, int]) -> None:
    w, h = size
    scene = _render(SceneSpec(w, h, seed=3))
    assert scene.image.shape == (h, w, 3)
    assert scene.image.dtype == np.uint8
    assert scene.image.flags.c_contiguous
    assert scene.cervix_box is not None
    x0, y0, x1, y1 = scene.cervix_box
    assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
    if w >= h:  # the disc fills roughly 25-50 % of the frame width
        assert 0.2 <= x1 - x0 <= 0.52


@pytest.mark.parametrize("seed", range(12))
def test_disc_size_and_placement(seed: int) -> None:
    scene = _render(SceneSpec(W, H, seed=seed))
    assert scene.cervix_box is not None
    x0, y0, x1, y1 = scene.cervix_box
    assert 0.2 <= x1 - x0 <= 0.52
    assert x0 > 0.0 and y0 > 0.0 and x1 < 1.0 and y1 < 1.0
    assert abs((x0 + x1) / 2 - 0.5) <= 0.13  # off-centre a little, not a lot


def test_deterministic_per_spec() -> None:
    spec = SceneSpec(W, H, seed=7, blur="motion", blur_px=6.0, stage="iodine")
    a, b = render(spec), render(spec)
    assert np.array_equal(a.image, b.image)
    assert a.cervix_box == b.cervix_box
    c = render(dataclasses.replace(spec, seed=8))
    assert not np.array_equal(a.image, c.image)
    assert a.cervix_box != c.cervix_box


def test_same_seed_same_geometry_across_blur_stage_and_resolution() -> None:
    base = _render(SceneSpec(W, H, seed=5))
    for other in (
        SceneSpec(W, H, seed=5, blur="defocus", blur_px=5.0),
        SceneSpec(W, H, seed=5, stage="green", brightness=0.3, noise=0.0),
    ):
        assert _render(other).cervix_box == base.cervix_box
    big = _render(SceneSpec(2 * W, 2 * H, seed=5))
    assert base.cervix_box is not None and big.cervix_box is not None
    assert np.allclose(base.cervix_box, big.cervix_box, atol=2e-3)


def test_expected_sharp() -> None:
    assert _render(SceneSpec(W, H)).expected_sharp
    for blur in ("defocus", "motion", "cervix_defocus"):
        assert not _render(SceneSpec(W, H, blur=blur, blur_px=4.0)).expected_sharp


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 10},
        {"blur": "gauss", "blur_px": 3.0},
        {"blur": "defocus"},  # blur without a size
        {"blur_px": 3.0},  # size without a blur
        {"blur": "defocus", "blur_px": -1.0},
        {"brightness": 0.0},
        {"noise": -1.0},
        {"stage": "lugol"},
        {"brightness": float("nan")},
    ],
)
def test_spec_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SceneSpec(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- focus


@pytest.mark.parametrize(
    ("size", "blur", "blur_px", "factor"),
    [
        ((W, H), "defocus", 4.0, 8.0),
        ((W, H), "defocus", 8.0, 8.0),
        ((W, H), "motion", 4.0, 4.0),
        ((W, H), "motion", 10.0, 6.0),
        ((W, H), "cervix_defocus", 4.0, 6.0),
        ((1600, 1200), "defocus", 4.0, 5.0),
        ((1600, 1200), "motion", 6.0, 4.0),
        ((1600, 1200), "cervix_defocus", 6.0, 4.5),
    ],
)
@pytest.mark.parametrize("seed", [0, 3])
def test_blur_removes_fine_detail_on_cervix(
    size: tuple[int, int], blur: str, blur_px: float, factor: float, seed: int
) -> None:
    w, h = size
    stage: Stage = "green" if seed == 3 else "acetic"
    sharp = _render(SceneSpec(w, h, seed=seed, stage=stage))
    blurred = _render(SceneSpec(w, h, seed=seed, stage=stage, blur=blur, blur_px=blur_px))  # type: ignore[arg-type]
    box = _box_px(sharp)
    assert _lap_var(sharp.image, box) > factor * _lap_var(blurred.image, box)


def test_blur_strength_is_monotonic() -> None:
    box = _box_px(_render(SceneSpec(W, H, seed=2)))
    values = [_lap_var(_render(SceneSpec(W, H, seed=2)).image, box)]
    values += [
        _lap_var(_render(SceneSpec(W, H, seed=2, blur="defocus", blur_px=r, noise=0.0)).image, box)
        for r in (1.0, 2.0, 4.0)
    ]
    assert values == sorted(values, reverse=True)


def _speculum_mask(scene: Scene) -> Mask:
    """Grey metal well away from the cervix."""
    hsv = cv2.cvtColor(scene.image, cv2.COLOR_BGR2HSV)
    mask = (_ellipse_dist(scene) > 1.3) & (hsv[..., 1] < 50) & (hsv[..., 2] > 60)
    return np.asarray(cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool))


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_cervix_defocus_keeps_speculum_sharp(seed: int) -> None:
    sharp = _render(SceneSpec(W, H, seed=seed))
    wrong_plane = _render(SceneSpec(W, H, seed=seed, blur="cervix_defocus", blur_px=6.0))
    everything = _render(SceneSpec(W, H, seed=seed, blur="defocus", blur_px=6.0))
    metal = _speculum_mask(sharp)
    assert metal.mean() > 0.05  # the blades are there and found
    lv_sharp = _lap_var(sharp.image, metal)
    assert _lap_var(wrong_plane.image, metal) > 0.95 * lv_sharp
    assert _lap_var(everything.image, metal) < 0.3 * lv_sharp  # the metal does carry fine detail
    far = _ellipse_dist(sharp) > 1.3
    assert np.array_equal(sharp.image[far], wrong_plane.image[far])
    box = _box_px(sharp)
    assert _lap_var(wrong_plane.image, box) < 0.25 * _lap_var(sharp.image, box)


# ------------------------------------------------------------------------------------------ exposure


@pytest.mark.parametrize("stage", ["saline", "acetic", "iodine", "green"])
def test_dark_and_overexposed(stage: str) -> None:
    ref = _render(SceneSpec(W, H, seed=4, stage=stage))  # type: ignore[arg-type]
    dark = _render(SceneSpec(W, H, seed=4, stage=stage, brightness=0.25))  # type: ignore[arg-type]
    over = _render(SceneSpec(W, H, seed=4, stage=stage, brightness=2.4))  # type: ignore[arg-type]
    g_ref, g_dark, g_over = _gray(ref.image), _gray(dark.image), _gray(over.image)
    x0, y0, x1, y1 = _box_px(ref)
    # dark: intensities scale down (noise stays, so the ratio is a touch above the brightness)
    assert 0.22 < g_dark.mean() / g_ref.mean() < 0.32
    assert g_dark.mean() < 35
    assert g_dark.std() > 3  # still a picture, not a black frame
    # overexposed: large areas clip at 255 (in at least one channel), above all on the cervix
    assert g_over.mean() > 1.6 * g_ref.mean()
    assert (over.image[y0:y1, x0:x1].max(axis=2) >= 254).mean() > 0.5
    if stage in ("saline", "acetic"):  # light tissue clips in luma too
        assert (g_over[y0:y1, x0:x1] >= 250).mean() > 0.3
    # the reference is neither
    assert (ref.image[y0:y1, x0:x1].max(axis=2) >= 254).mean() < 0.05
    assert (g_ref >= 250).mean() < 0.01
    assert 60 < g_ref.mean() < 140


def test_brightness_is_linear_before_noise() -> None:
    a = _render(SceneSpec(W, H, seed=9, noise=0.0)).image.astype(np.float32)
    b = _render(SceneSpec(W, H, seed=9, noise=0.0, brightness=0.5)).image.astype(np.float32)
    unclipped = a < 250
    assert np.abs(a * 0.5 - b)[unclipped].max() <= 1.0


def test_noise_level() -> None:
    clean = _render(SceneSpec(W, H, seed=6, noise=0.0)).image.astype(np.float32)
    noisy = _render(SceneSpec(W, H, seed=6, noise=4.0)).image.astype(np.float32)
    diff = (noisy - clean)[(clean > 10) & (clean < 245)]
    assert abs(float(diff.std()) - 4.0) < 0.3
    assert abs(float(diff.mean())) < 0.2


# -------------------------------------------------------------------------------------- cervix truth


def _edge_box(scene: Scene) -> tuple[float, float, float, float]:
    """Box of the strongest outward luma drop along rays from the box centre (the disc's rim)."""
    assert scene.cervix_box is not None
    h, w = scene.image.shape[:2]
    g = cv2.GaussianBlur(_gray(scene.image), (0, 0), 1.5)
    x0, y0, x1, y1 = scene.cervix_box
    cx, cy, hw, hh = (x0 + x1) / 2 * w, (y0 + y1) / 2 * h, (x1 - x0) / 2 * w, (y1 - y0) / 2 * h
    th = np.linspace(0, 2 * np.pi, 180, endpoint=False)[:, None]
    r = np.linspace(0.75, 1.25, 101)[None, :]
    xs, ys = cx + r * hw * np.cos(th), cy + r * hh * np.sin(th)
    prof = cv2.remap(g, xs.astype(np.float32), ys.astype(np.float32), cv2.INTER_LINEAR)
    k = np.argmin(np.diff(prof, axis=1), axis=1)
    ex, ey = xs[np.arange(th.size), k], ys[np.arange(th.size), k]
    return float(ex.min()) / w, float(ey.min()) / h, float(ex.max()) / w, float(ey.max()) / h


@pytest.mark.parametrize("seed", range(8))
def test_box_matches_rendered_disc(seed: int) -> None:
    stage = ("saline", "acetic", "iodine", "green")[seed % 4]
    scene = _render(SceneSpec(W, H, seed=seed, stage=stage))  # type: ignore[arg-type]
    assert scene.cervix_box is not None
    assert iou(_edge_box(scene), scene.cervix_box) > 0.85
    img = scene.image.astype(np.float32)
    g = _gray(scene.image)
    e = _ellipse_dist(scene)
    inner, ring = e < 0.6, (e > 1.08) & (e < 1.25)
    # a bright dome inside, the dark fornix just outside
    assert g[ring].mean() < 0.7 * g[inner].mean()
    if stage != "green":  # tissue is red-dominant inside the box
        assert (img[..., 2][inner] > img[..., 1][inner] + 25).mean() > 0.8


def test_stage_colours() -> None:
    def box_mean(stage: str) -> npt.NDArray[np.float64]:
        scene = _render(SceneSpec(W, H, seed=1, stage=stage))  # type: ignore[arg-type]
        inner = _ellipse_dist(scene) < 0.7
        return np.asarray(scene.image[inner].astype(np.float64).mean(axis=0))  # B, G, R

    b, g, r = box_mean("saline")
    assert r > g + 50 and r > b + 40  # pink / red
    b, g, r = box_mean("iodine")
    assert r > g > b and r > 2.0 * b  # mahogany / orange-brown
    b, g, r = box_mean("green")
    assert g > r + 40 and g > b + 30  # green-filtered

    # acetic: whitish (acetowhite) patches that saline lacks
    def whitish(stage: str) -> float:
        scene = _render(SceneSpec(W, H, seed=1, stage=stage))  # type: ignore[arg-type]
        hsv = cv2.cvtColor(scene.image, cv2.COLOR_BGR2HSV)
        inner = _ellipse_dist(scene) < 0.9
        return float(((hsv[..., 1] < 60) & (hsv[..., 2] > 150))[inner].mean())

    assert whitish("acetic") > 0.03
    assert whitish("acetic") > 5 * whitish("saline")


# ------------------------------------------------------------------------------------------ no cervix


def test_no_cervix_alternates_wall_and_desk() -> None:
    wall = _render(SceneSpec(W, H, cervix=False, seed=2))
    desk = _render(SceneSpec(W, H, cervix=False, seed=3))
    assert wall.cervix_box is None and desk.cervix_box is None
    assert wall.expected_sharp and desk.expected_sharp
    # even seed: vaginal wall and speculum, reddish, no bright dome in the middle
    wm = wall.image.reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert wm[2] > wm[1] + 20
    g = _gray(wall.image)
    h, w = g.shape
    assert g[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].mean() < 1.2 * g.mean()
    # odd seed: an everyday desk scene, not tissue-coloured
    dm = desk.image.reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert abs(dm[2] - dm[1]) < 25
    # both carry fine detail that blur removes
    for seed, scene in ((2, wall), (3, desk)):
        blurred = _render(SceneSpec(W, H, cervix=False, seed=seed, blur="defocus", blur_px=5.0))
        full = (0, 0, w, h)
        assert _lap_var(scene.image, full) > 4 * _lap_var(blurred.image, full)


def test_no_cervix_with_cervix_defocus_renders() -> None:
    for seed in (4, 5):
        scene = _render(SceneSpec(W, H, cervix=False, seed=seed, blur="cervix_defocus", blur_px=5.0))
        assert scene.image.shape == (H, W, 3) and scene.cervix_box is None


# ---------------------------------------------------------------------------------------- jpeg + set


def test_encode_jpeg_roundtrip() -> None:
    scene = _render(SceneSpec(W, H, seed=1))
    data = encode_jpeg(scene.image, quality=85)
    assert data[:2] == b"\xff\xd8"
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert back is not None and back.shape == scene.image.shape
    assert np.abs(back.astype(np.float32) - scene.image.astype(np.float32)).mean() < 6
    assert len(encode_jpeg(scene.image, quality=30)) < len(data)
    with pytest.raises(ValueError):
        encode_jpeg(scene.image.astype(np.float32))
    with pytest.raises(ValueError):
        encode_jpeg(scene.image, quality=0)


def test_standard_set_covers_the_cases() -> None:
    scenes = standard_set(400, 300)
    specs = [s.spec for s in scenes]
    assert all(s.image.shape == (300, 400, 3) for s in scenes)
    sharp = [s for s in specs if s.blur == "none" and s.cervix and s.brightness == 1.0]
    assert {s.stage for s in sharp} == {"saline", "acetic", "iodine", "green"}
    assert {s.blur for s in specs} == {"none", "defocus", "motion", "cervix_defocus"}
    assert any(s.brightness < 0.35 for s in specs)
    assert any(s.brightness > 1.8 for s in specs)
    no_cervix = [s for s in specs if not s.cervix]
    assert {s.seed % 2 for s in no_cervix} == {0, 1}  # wall + speculum, and desk
    for scene in scenes:
        assert (scene.cervix_box is None) == (not scene.spec.cervix)
        assert scene.expected_sharp == (scene.spec.blur == "none")
