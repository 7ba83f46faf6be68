"""Exposure checks on real image arrays: uniform, split, clipped, glinting and degenerate cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from gateway.assessment import Box
from gateway.exposure import ExposureConfig, check_exposure

CONFIG = ExposureConfig()


def flat(bgr: tuple[int, int, int], h: int = 600, w: int = 800) -> np.ndarray:
    image = np.empty((h, w, 3), np.uint8)
    image[:] = bgr
    return image


def test_mid_grey_is_well_exposed() -> None:
    found = check_exposure(flat((128, 128, 128)), None, CONFIG)
    assert found.mean_luma == pytest.approx(128, abs=0.5)
    assert found.dark_fraction == 0 and found.clipped_fraction == 0
    assert not found.too_dark and not found.overexposed


def test_black_is_too_dark_and_white_is_overexposed() -> None:
    black = check_exposure(flat((0, 0, 0)), None, CONFIG)
    assert black.too_dark and not black.overexposed and black.dark_fraction == 1
    white = check_exposure(flat((255, 255, 255)), None, CONFIG)
    assert white.overexposed and not white.too_dark and white.clipped_fraction == 1


def test_dim_tissue_is_too_dark() -> None:
    assert check_exposure(flat((20, 25, 70)), None, CONFIG).too_dark


def test_box_selects_the_judged_region() -> None:
    image = flat((0, 0, 0))
    image[:, 400:] = 255
    right = check_exposure(image, (0.55, 0.1, 0.95, 0.9), CONFIG)
    assert right.overexposed and not right.too_dark
    left = check_exposure(image, (0.05, 0.1, 0.45, 0.9), CONFIG)
    assert left.too_dark and not left.overexposed


def test_no_box_judges_the_centre() -> None:
    image = flat((0, 0, 0))
    image[150:450, 200:600] = (120, 130, 200)  # a well lit centre in a black frame
    found = check_exposure(image, None, ExposureConfig(central_fraction=0.5))
    assert found.dark_fraction == 0
    assert not found.too_dark and not found.overexposed


def test_saturated_red_channel_is_not_overexposure() -> None:
    # Well exposed red tissue often clips the red channel; luma is far from clipping.
    found = check_exposure(flat((110, 120, 255)), None, CONFIG)
    assert found.clipped_fraction == 0 and not found.overexposed


def test_specular_glints_are_tolerated_but_large_clipping_is_not() -> None:
    rng = np.random.default_rng(0)
    image = flat((130, 140, 210))
    ys, xs = rng.integers(0, 600, 9600), rng.integers(0, 800, 9600)  # ~2 % glint pixels
    image[ys, xs] = 255
    assert not check_exposure(image, None, CONFIG).overexposed
    image[200:400, 250:550] = 255  # a washed-out quarter of the judged region
    found = check_exposure(image, None, CONFIG)
    assert found.overexposed and found.clipped_fraction > CONFIG.max_clipped_fraction


def test_large_images_are_subsampled_consistently() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    found = check_exposure(image, (0.0, 0.0, 1.0, 1.0), CONFIG)
    luma = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert found.mean_luma == pytest.approx(float(luma.mean()), abs=1)
    assert found.dark_fraction == pytest.approx(float((luma < CONFIG.dark_level).mean()), abs=0.01)


@pytest.mark.parametrize(
    "box",
    [
        (0.0, 0.0, 1.0, 1.0),
        (0.5, 0.5, 0.5, 0.5),
        (0.9, 0.9, 0.1, 0.1),
        (-1.0, -1.0, 2.0, 2.0),
        (1.0, 1.0, 1.0, 1.0),
        (math.nan, 0.0, 1.0, 1.0),
        (0.0, 0.0, math.inf, 1.0),
    ],
)
def test_any_box_is_handled(box: Box) -> None:
    found = check_exposure(flat((128, 128, 128)), box, CONFIG)
    assert found.mean_luma == pytest.approx(128, abs=0.5)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 500, 3), (500, 1, 3), (2, 3, 3)])
def test_tiny_images(shape: tuple[int, int, int]) -> None:
    found = check_exposure(np.full(shape, 200, np.uint8), None, CONFIG)
    assert found.mean_luma == pytest.approx(200, abs=0.5)


def test_config_is_strict_and_frozen() -> None:
    with pytest.raises(ValidationError):
        ExposureConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ExposureConfig(max_clipped_fraction=2.0)
    with pytest.raises(ValidationError):
        CONFIG.dark_level = 10
    assert all(field.description for field in ExposureConfig.model_fields.values())
