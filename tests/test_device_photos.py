"""Device-like photos: the atlas cervix framed at its native resolution, then the phone pipeline."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gateway import scenes
from gateway.training import device_photos as dp


def _atlas(seed: int = 3) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """An 800 x 600 'atlas' photo (a close-up scene) and its cervix box in pixels."""
    scene = scenes.render(scenes.SceneSpec(800, 600, seed=seed, noise=1.0))
    assert scene.cervix_box is not None
    x0, y0, x1, y1 = scene.cervix_box
    return scene.image, (x0 * 800, y0 * 600, x1 * 800, y1 * 600)


def _energy(image: np.ndarray, mask: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_64F))[mask].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cervix_is_pasted_at_native_resolution_and_fills_a_quarter_to_half_the_width(seed: int) -> None:
    atlas, box = _atlas(seed + 5)
    frame = dp.compose(atlas, box, np.random.default_rng(seed), stage="acetic")
    h, w = frame.image.shape[:2]
    assert w == pytest.approx(4 * h / 3, abs=1)
    assert frame.cervix_width_px == pytest.approx(box[2] - box[0])
    assert 0.25 <= frame.cervix_fraction <= 0.5
    # the middle of the cervix is the atlas's own pixels, one to one (no resampling)
    fx0, fy0 = round(frame.cervix_box[0]), round(frame.cervix_box[1])
    ax0, ay0 = round(box[0]), round(box[1])
    bw, bh = round(box[2] - box[0]), round(box[3] - box[1])
    core = np.s_[bh // 4 : 3 * bh // 4, bw // 4 : 3 * bw // 4]
    pasted = frame.image[fy0 : fy0 + bh, fx0 : fx0 + bw][core]
    original = atlas[ay0 : ay0 + bh, ax0 : ax0 + bw][core]
    assert np.array_equal(pasted, original)
    # the speculum is there, and off the cervix
    assert 0.05 < frame.speculum.mean() < 0.8
    assert frame.speculum[fy0 : fy0 + bh, fx0 : fx0 + bw][core].max() == 0.0


def test_capture_states_the_cervix_width_and_makes_a_phone_jpeg() -> None:
    atlas, box = _atlas()
    rng = np.random.default_rng(4)
    photo = dp.device_photo(atlas, box, rng, stage="lugol")
    assert photo.jpeg[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(photo.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, photo.image)
    assert photo.meta["cervix_width_px"] == pytest.approx(box[2] - box[0])
    assert 80 <= photo.meta["jpeg_quality"] <= 95
    assert photo.meta["frame"] == [photo.image.shape[1], photo.image.shape[0]]
    assert not photo.meta["blurred"]


def test_the_same_draws_give_the_same_photo() -> None:
    atlas, box = _atlas()
    a = dp.device_photo(atlas, box, np.random.default_rng(9), blur=dp.motion(12.0, 30.0))
    b = dp.device_photo(atlas, box, np.random.default_rng(9), blur=dp.motion(12.0, 30.0))
    assert a.jpeg == b.jpeg and a.meta == b.meta


def test_defocus_with_the_speculum_sharp_blurs_the_tissue_only() -> None:
    atlas, box = _atlas()
    frame = dp.compose(atlas, box, np.random.default_rng(2))
    metal = frame.speculum > 0.999
    metal = cv2.erode(metal.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    tissue = cv2.erode((frame.speculum < 0.001).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    radius = 0.02 * frame.cervix_width_px
    sharp = dp.capture(frame, np.random.default_rng(1))
    kept = dp.capture(frame, np.random.default_rng(1), blur=dp.defocus(radius), speculum_sharp=True)
    whole = dp.capture(frame, np.random.default_rng(1), blur=dp.defocus(radius))
    assert _energy(kept.image, tissue) < 0.7 * _energy(sharp.image, tissue)
    assert _energy(kept.image, metal) == pytest.approx(_energy(sharp.image, metal), rel=0.1)
    assert _energy(whole.image, metal) < 0.8 * _energy(sharp.image, metal)
    assert kept.meta["speculum_sharp"] and not whole.meta["speculum_sharp"]


def _step_frame(glint: bool = False) -> dp.DeviceFrame:
    image = np.full((240, 320, 3), 60, np.uint8)
    image[:, 160:] = 170
    if glint:
        image[118:122, 78:82] = 255
    return dp.DeviceFrame(image, np.zeros((240, 320), np.float32), (40.0, 40.0, 280.0, 200.0), 0, (0, 0, 1, 1))


def _halos(image: np.ndarray) -> tuple[float, float]:
    """(overshoot on the bright side, undershoot on the dark side) of the vertical step edge at x = 160."""
    profile = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[60:180].mean(axis=0)
    bright, dark = profile[200:300].mean(), profile[20:120].mean()
    return float(profile[150:175].max() - bright), float(dark - profile[145:170].min())


def test_the_blur_acts_on_the_optical_image_before_noise_and_sharpening() -> None:
    frame = _step_frame()
    seen: list[np.ndarray] = []

    def spy(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        seen.append(image.copy())
        return dp.defocus(1.5)(image, box)

    photo = dp.capture(frame, np.random.default_rng(0), blur=spy)
    assert len(seen) == 1 and np.array_equal(seen[0], frame.image)  # clean: no noise, no sharpening yet
    assert photo.meta["blurred"]


def test_sharpening_leaves_halos_on_sharp_and_on_blurred_edges() -> None:
    frame = _step_frame()
    blur = dp.defocus(1.5)
    assert max(_halos(blur(frame.image, frame.cervix_box))) < 1.0  # the blur alone leaves none
    sharp = [_halos(dp.capture(frame, np.random.default_rng(s)).image) for s in range(6)]
    blurred = [_halos(dp.capture(frame, np.random.default_rng(s), blur=blur).image) for s in range(6)]
    assert all(over > 3 and under > 3 for over, under in sharp)
    assert np.median([over for over, _ in blurred]) > 5 and np.median([under for _, under in blurred]) > 5


def test_motion_streaks_glints_saturated() -> None:
    frame = _step_frame(glint=True)
    blurred = dp.motion(20.0, 0.0)(frame.image, frame.cervix_box)
    streak = blurred[120, 72:88].astype(np.float64)
    # a plain average of the levels would leave about 60 + 195 * 4 / 20 = 99
    assert streak.mean() > 150
    assert blurred[40, 40, 0] == pytest.approx(60, abs=1)


def test_the_speculum_mask_covers_the_metal_of_the_scene() -> None:
    spec = scenes.SceneSpec(640, 480, seed=8, noise=0.0)
    image, mask = scenes.render(spec).image, scenes.speculum_mask(spec)
    saturation = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[:, :, 1]
    assert saturation[mask > 0.99].mean() < 25 < 80 < saturation[mask < 0.01].mean()
