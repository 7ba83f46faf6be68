"""Photo -> tensor as the input spec says, and boxes back to the photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gateway.models.manifest import InputSpec
from gateway.models.preprocess import Geometry, crop, preprocess, shrink


def test_stretch_rgb_normalised_hand_computed() -> None:
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, :] = (255, 0, 51)  # BGR: blue 255, green 0, red 51
    spec = InputSpec(name="x", shape=(1, 3, 16, 16), resize="stretch", mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    tensor, geometry = preprocess(image, spec)
    assert tensor.shape == (1, 3, 16, 16) and tensor.dtype == np.float32
    # RGB order: red 51/255 = 0.2 -> (0.2-0.5)/0.5 = -0.6; green 0 -> -2; blue 1 -> 1
    np.testing.assert_allclose(tensor[0, :, 5, 5], [-0.6, -2.0, 1.0], atol=1e-6)
    assert (geometry.scale_x, geometry.scale_y) == (0.25, 0.5)


def test_bgr_order_and_float16() -> None:
    image = np.full((16, 16, 3), (255, 0, 0), dtype=np.uint8)
    spec = InputSpec(name="x", shape=(1, 3, 16, 16), colour="bgr", mean=(0, 0, 0), std=(1, 1, 1), dtype="float16")
    tensor, _ = preprocess(image, spec)
    assert tensor.dtype == np.float16
    np.testing.assert_allclose(tensor[0, :, 0, 0], [1.0, 0.0, 0.0])


def test_letterbox_keeps_the_aspect_and_pads_right_and_bottom() -> None:
    image = np.full((20, 40, 3), 255, dtype=np.uint8)
    spec = InputSpec(name="x", shape=(1, 3, 32, 32), mean=(0, 0, 0), std=(1, 1, 1), pad_value=0)
    tensor, geometry = preprocess(image, spec)
    # 40x20 -> 32x16 at the top left, zero below
    assert tensor[0, 0, :16].min() == pytest.approx(1.0)
    assert tensor[0, 0, 16:].max() == pytest.approx(0.0)
    assert (geometry.scale_x, geometry.scale_y) == (0.8, 0.8)
    # a box over the whole picture part maps back to the whole photo; boxes in the padding clip
    np.testing.assert_allclose(
        geometry.to_source(np.array([[0, 0, 32, 16], [0, 16, 32, 32]])), [[0, 0, 1, 1], [0, 1, 1, 1]]
    )


def test_grey_photos_are_accepted() -> None:
    tensor, _ = preprocess(np.full((10, 10), 128, dtype=np.uint8), InputSpec(name="x", shape=(1, 3, 16, 16)))
    assert tensor.shape == (1, 3, 16, 16)


def test_geometry_to_source() -> None:
    g = Geometry(source_w=200, source_h=100, scale_x=0.16, scale_y=0.32)
    np.testing.assert_allclose(g.to_source(np.array([8, 8, 32, 24])), [[0.25, 0.25, 1.0, 0.75]])


def test_crop_with_margin() -> None:
    image = np.arange(100 * 200).reshape(100, 200)
    part = crop(image, (0.25, 0.5, 0.75, 1.0), 0.1)
    # x: 0.25-0.05 .. 0.75+0.05 of 200 = 40..160; y: 0.45 .. 1.0 (clipped) of 100 = 45..100
    assert part.shape == (55, 120) and part[0, 0] == 45 * 200 + 40
    assert crop(image, None, 0.1) is image
    assert crop(image, (0.5, 0.5, 0.5, 0.5), 0.0) is image  # degenerate: the whole photo


def _photo(h: int, w: int) -> np.ndarray:
    """Smooth random texture, like a photo's (white noise would make area averaging trivially flat)."""
    noise = np.random.default_rng(7).random((h, w, 3)).astype(np.float32) * 255
    return np.clip((cv2.GaussianBlur(noise, (0, 0), 2) - 127.5) * 3 + 127.5, 0, 255).astype(np.uint8)


def test_shrink_by_halvings_stays_close_to_one_step() -> None:
    image = _photo(1500, 2000)  # a 12 MP photo decoded at half scale
    one_step = cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)
    fast = shrink(image, 320, 240)
    difference = np.abs(fast.astype(int) - one_step.astype(int))
    assert fast.shape == (240, 320, 3)
    assert difference.max() <= 8 and difference.mean() < 1.0  # measured: 7 and 0.84 on this texture (std 31)
    assert not np.array_equal(fast, one_step)  # the halving path did run


@pytest.mark.parametrize("shape", [(600, 800), (1501, 2000), (1500, 2001)])
def test_shrink_under_4x_or_on_odd_sides_is_one_area_resize(shape: tuple[int, int]) -> None:
    image = _photo(*shape)
    np.testing.assert_array_equal(shrink(image, 320, 240), cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA))


def _reference(resized: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The formula the tensor follows, written plainly: a float canvas padded with ``pad_value``, the photo at
    its top left, channels in the spec's order, ``(x - mean * scale) / (std * scale)``, NCHW."""
    h, w = resized.shape[:2]
    canvas = np.full((spec.height, spec.width, 3), spec.pad_value, dtype=np.float32)
    canvas[:h, :w] = resized
    if spec.colour == "rgb":
        canvas = canvas[:, :, ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32) * spec.scale
    std = np.asarray(spec.std, dtype=np.float32) * spec.scale
    return np.ascontiguousarray(((canvas - mean) / std).transpose(2, 0, 1)[None], dtype=np.dtype(spec.dtype))


@pytest.mark.parametrize(
    ("shape", "size", "resize", "colour", "dtype"),
    [
        ((1500, 2000), 320, "letterbox", "rgb", "float32"),  # the detector on a half-scale 12 MP decode
        ((700, 760), 384, "stretch", "rgb", "float32"),  # the focus model on a cervix crop
        ((300, 200), 96, "letterbox", "bgr", "float16"),  # taller than wide: padded on the right
        ((40, 50), 64, "letterbox", "rgb", "float32"),  # enlarged
    ],
)
def test_tensor_is_the_reference_formula_to_the_bit(
    shape: tuple[int, int], size: int, resize: str, colour: str, dtype: str
) -> None:
    spec = InputSpec.model_validate(
        {
            "name": "x",
            "shape": (1, 3, size, size),
            "resize": resize,
            "colour": colour,
            "dtype": dtype,
            "pad_value": 114,
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
    )
    image = _photo(*shape)
    tensor, geometry = preprocess(image, spec)
    new_w, new_h = round(geometry.scale_x * shape[1]), round(geometry.scale_y * shape[0])
    enlarged = new_w > shape[1]
    resized = (
        cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if enlarged else shrink(image, new_w, new_h)
    )
    expected = _reference(resized, spec)
    assert tensor.dtype == expected.dtype and tensor.flags.c_contiguous
    np.testing.assert_array_equal(tensor, expected)
    if resize == "letterbox" and shape[0] != shape[1]:
        assert (new_w < size) != (new_h < size)  # the padding is part of what was compared
