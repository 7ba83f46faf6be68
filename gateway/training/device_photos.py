"""Device-like photos: an atlas cervix framed as a smartphone colposcope sees it, then a phone's image pipeline.

For training and for evaluation alike. Nothing is written to disk.

Framing (``compose``): the atlas photo's cervix (its labelled box plus a margin) is pasted at its native
resolution, never resized, into a synthetic view through a speculum (``gateway.scenes``: vaginal walls with
folds, a dark fornix, two brushed-metal blades with bright rims, glints, vignette) rendered at the size that
makes the cervix 25-50 % of the frame width (4:3 landscape). The scene's own cervix lies under the paste, the
paste is feathered in over an ellipse just outside the cervix box, and the scene's tissue is tinted to the atlas
cervix's mean colour (the metal is not). The blades are laid back over the paste, so they always stay in front.

Capture (``capture``): optional blur on the composed frame, then sensor noise (signal-dependent), denoising
(bilateral on luma, Gaussian on chroma), unsharp-mask sharpening with its halos, and JPEG 80-95. The blur comes
before the sharpening, as in a phone, so a blurred photo looks crisper than it is. ``speculum_sharp=True`` keeps
the blades unblurred (the camera focused on the speculum: defocus of the tissue behind it).

API (``PixelBox`` = x0, y0, x1, y1 in pixels)::

    frame = compose(atlas_bgr, atlas_box_px, rng, stage="acetic")   # DeviceFrame
    frame.image, frame.cervix_box, frame.cervix_width_px, frame.speculum  # float32 mask, metal = 1
    photo = capture(frame, rng)                                       # sharp: DevicePhoto
    photo = capture(frame, rng, blur=motion(0.03 * frame.cervix_width_px, angle_deg=40.0))  # streaked glints
    photo = capture(frame, rng, blur=defocus(0.015 * frame.cervix_width_px), speculum_sharp=True)
    photo = capture(frame, rng, blur=lambda image, box: degradations.blur(image, box, d))  # any (image, box) blur
    photo.jpeg (bytes), photo.image (decoded BGR), photo.cervix_box, photo.meta["cervix_width_px"], ...

``motion`` and ``defocus`` use the training degradation model's kernels on linear light with clipped glints
raised above white (``optics``), so glints streak and bloom. Blur sizes are in pixels of the frame, where the cervix is
``cervix_width_px`` wide (the atlas cervix's own width).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from gateway import scenes
from gateway.training import degradations

PixelBox = tuple[float, float, float, float]
Blur = Callable[[np.ndarray, PixelBox], np.ndarray]
"""(BGR uint8 frame, cervix box in pixels) -> blurred frame of the same size."""
CERVIX_FRACTION = (0.25, 0.5)
"""Cervix width / frame width."""
PASTE_MARGIN = 0.12
"""The atlas crop: the cervix box plus this fraction of its size on each side (what the atlas has of it)."""
NOISE_GAIN = (0.02, 0.25)
"""Sensor noise variance per level of signal (shot noise, in 8-bit levels), log-uniform."""
NOISE_FLOOR = (0.5, 2.5)
"""Read noise std, 8-bit levels."""
DENOISE_SIGMA_COLOUR = (6.0, 20.0)
CHROMA_SIGMA = (0.8, 2.0)
SHARPEN_AMOUNT = (0.5, 1.5)
SHARPEN_SIGMA = (0.8, 2.0)
JPEG_QUALITY = (80, 95)
GLINT_GAIN = 3.0
"""Radiance of a clipped highlight relative to white, for ``optics``."""
STAGES: dict[str, scenes.Stage] = {"acetic": "acetic", "saline": "saline", "lugol": "iodine", "green": "green"}
"""Atlas stage group -> the stage the surroundings are painted in (others: saline)."""


@dataclass(frozen=True, eq=False)
class DeviceFrame:
    """A composed view before capture."""

    image: np.ndarray
    """BGR uint8, 4:3 landscape."""
    speculum: np.ndarray
    """``[H, W]`` float32 0..1, where the blades cover the view."""
    cervix_box: PixelBox
    """The atlas cervix box, in frame pixels."""
    scene_seed: int
    source_box: PixelBox
    """The atlas box it came from, in atlas pixels."""

    @property
    def cervix_width_px(self) -> float:
        return self.cervix_box[2] - self.cervix_box[0]

    @property
    def cervix_fraction(self) -> float:
        return self.cervix_width_px / self.image.shape[1]


@dataclass(frozen=True, eq=False)
class DevicePhoto:
    jpeg: bytes
    image: np.ndarray
    """``jpeg`` decoded, BGR uint8."""
    cervix_box: PixelBox
    meta: dict[str, Any] = field(default_factory=dict)
    """cervix_width_px, cervix_fraction, frame (w, h), scene_seed, noise, denoise, sharpen, jpeg_quality, blurred,
    speculum_sharp."""


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ------------------------------------------------------------------------------------------ framing


def _scene_for(rng: np.random.Generator, stage: scenes.Stage) -> tuple[int, float, PixelBox]:
    """A scene seed whose cervix is 25-50 % of the frame width: (seed, fraction, normalised box)."""
    while True:
        seed = int(rng.integers(0, 2**31))
        probe = scenes.render(scenes.SceneSpec(160, 120, seed=seed, stage=stage, noise=0.0))
        assert probe.cervix_box is not None
        fraction = probe.cervix_box[2] - probe.cervix_box[0]
        if CERVIX_FRACTION[0] <= fraction <= CERVIX_FRACTION[1]:
            return seed, fraction, probe.cervix_box


def _paste_weight(shape: tuple[int, int], box: PixelBox, valid: np.ndarray) -> np.ndarray:
    """Where the atlas crop shows: an ellipse 8 % outside the cervix box, feathered, and only where the atlas has
    pixels (feathered in from the atlas photo's edge)."""
    h, w = shape
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rho = np.hypot((xx + 0.5 - (x0 + x1) / 2) / (0.54 * bw), (yy + 0.5 - (y0 + y1) / 2) / (0.54 * bh))
    ellipse = np.clip((1.0 - rho) / 0.08, 0.0, 1.0)
    feather = max(1.0, 0.02 * bw)
    inside = cv2.GaussianBlur(
        cv2.erode(valid, np.ones((3, 3), np.uint8), iterations=max(1, round(feather))), (0, 0), feather
    )
    out: np.ndarray = (ellipse * inside.astype(np.float32) / 255.0).astype(np.float32)
    return out


def compose(
    atlas: np.ndarray, box: PixelBox, rng: np.random.Generator, stage: str = "acetic", brightness: float = 1.0
) -> DeviceFrame:
    """Frame the cervix of ``atlas`` (BGR uint8, cervix box ``box`` in its pixels) as a smartphone colposcope
    sees it; ``stage`` is the atlas stage group (acetic, saline, lugol, green, other)."""
    ah, aw = atlas.shape[:2]
    bx0, by0, bx1, by1 = (float(v) for v in box)
    bw, bh = bx1 - bx0, by1 - by0
    if bw < 8 or bh < 8:
        raise ValueError(f"cervix box too small: {box}")
    scene_stage = STAGES.get(stage, "saline")
    seed, fraction, nbox = _scene_for(rng, scene_stage)
    width = max(64, round(bw / fraction))
    height = max(64, round(width * 3 / 4))
    spec = scenes.SceneSpec(width, height, seed=seed, stage=scene_stage, noise=0.0, brightness=brightness)
    scene = scenes.render(spec).image.astype(np.float32)
    speculum = scenes.speculum_mask(spec)
    # where the atlas cervix goes: centred on the scene's cervix
    cx, cy = (nbox[0] + nbox[2]) / 2 * width, (nbox[1] + nbox[3]) / 2 * height
    dx, dy = round(cx - (bx0 + bx1) / 2), round(cy - (by0 + by1) / 2)
    cervix_box = (bx0 + dx, by0 + dy, bx1 + dx, by1 + dy)
    # the atlas crop (box + margin, within the atlas photo), clipped to the frame
    ax0, ay0 = max(0, math.floor(bx0 - PASTE_MARGIN * bw)), max(0, math.floor(by0 - PASTE_MARGIN * bh))
    ax1, ay1 = min(aw, math.ceil(bx1 + PASTE_MARGIN * bw)), min(ah, math.ceil(by1 + PASTE_MARGIN * bh))
    fx0, fy0 = max(0, ax0 + dx), max(0, ay0 + dy)
    fx1, fy1 = min(width, ax1 + dx), min(height, ay1 + dy)
    crop = atlas[fy0 - dy : fy1 - dy, fx0 - dx : fx1 - dx].astype(np.float32)
    valid = np.zeros((height, width), np.uint8)
    valid[fy0:fy1, fx0:fx1] = 255
    weight = _paste_weight((height, width), cervix_box, valid)
    # tint the scene's tissue to the atlas cervix's mean colour
    core = weight[fy0:fy1, fx0:fx1] > 0.99
    if core.any():
        target = crop[core].mean(axis=0)
        current = scene[fy0:fy1, fx0:fx1][core].mean(axis=0)
        gain = np.clip(target / np.maximum(current, 1.0), 0.5, 2.0).astype(np.float32)
        tissue = (1.0 - speculum)[:, :, None]
        scene = scene * (tissue * gain + (1.0 - tissue))
    pasted = np.zeros_like(scene)
    pasted[fy0:fy1, fx0:fx1] = crop
    w3 = (weight * (1.0 - speculum))[:, :, None]
    image = np.clip(scene * (1.0 - w3) + pasted * w3 + 0.5, 0, 255).astype(np.uint8)
    return DeviceFrame(image, speculum, cervix_box, seed, (bx0, by0, bx1, by1))


# ------------------------------------------------------------------------------------------ blur


def optics(kernel: np.ndarray) -> Blur:
    """Blur by ``kernel`` on linear light (gamma 2.2 undone), clipped highlights raised to ``GLINT_GAIN`` times
    white first: glints streak and bloom as through a lens, while bright but unclipped tissue does not."""

    def apply(image: np.ndarray, box: PixelBox) -> np.ndarray:
        light = np.power(image.astype(np.float32) / 255.0, 2.2)
        clipped = image.max(axis=2, keepdims=True) >= 250 if image.ndim == 3 else image >= 250
        light = np.where(clipped, light * GLINT_GAIN, light)
        blurred = cv2.filter2D(light, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        out: np.ndarray = np.clip(255.0 * np.power(np.clip(blurred, 0.0, 1.0), 1 / 2.2) + 0.5, 0, 255).astype(np.uint8)
        return out

    return apply


def motion(length_px: float, angle_deg: float) -> Blur:
    """Camera shake: a line of ``length_px`` at ``angle_deg`` over the whole frame (the training model's kernel)."""
    return optics(degradations.motion_kernel(length_px, angle_deg))


def defocus(radius_px: float) -> Blur:
    """A thin lens out of focus: a disk of ``radius_px`` over the frame (the training model's kernel)."""
    return optics(degradations.disk_kernel(radius_px))


# ------------------------------------------------------------------------------------------ capture


def capture(
    frame: DeviceFrame, rng: np.random.Generator, blur: Blur | None = None, speculum_sharp: bool = False
) -> DevicePhoto:
    """The phone: ``blur`` (optics), sensor noise, denoising, sharpening with halos, JPEG 80-95."""
    image = frame.image
    if blur is not None:
        blurred = blur(image, frame.cervix_box)
        if speculum_sharp:
            metal = frame.speculum[:, :, None]
            blurred = np.clip(blurred * (1.0 - metal) + image * metal + 0.5, 0, 255).astype(np.uint8)
        image = blurred
    gain, floor = _log_uniform(rng, *NOISE_GAIN), float(rng.uniform(*NOISE_FLOOR))
    sigma_colour, chroma = float(rng.uniform(*DENOISE_SIGMA_COLOUR)), float(rng.uniform(*CHROMA_SIGMA))
    amount, radius = float(rng.uniform(*SHARPEN_AMOUNT)), float(rng.uniform(*SHARPEN_SIGMA))
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    # sensor: signal-dependent noise (variance = gain * level + floor^2), per channel
    x = image.astype(np.float32)
    x += np.sqrt(gain * x + floor * floor) * rng.standard_normal(x.shape, dtype=np.float32)
    ycc = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_BGR2YCrCb)
    # denoise: edge-preserving on luma, strong on chroma
    luma = cv2.bilateralFilter(ycc[:, :, 0], 5, sigma_colour, 2.0).astype(np.float32)
    for c in (1, 2):
        ycc[:, :, c] = cv2.GaussianBlur(ycc[:, :, c], (0, 0), chroma)
    # sharpen: unsharp mask on luma, no clamp to the local range (the halos), a small threshold against noise
    detail = luma - cv2.GaussianBlur(luma, (0, 0), radius)
    detail[np.abs(detail) < 1.0] = 0.0
    ycc[:, :, 0] = np.clip(luma + amount * detail + 0.5, 0, 255).astype(np.uint8)
    jpeg = scenes.encode_jpeg(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR), quality)
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("JPEG round trip failed")
    h, w = frame.image.shape[:2]
    meta: dict[str, Any] = {
        "cervix_width_px": frame.cervix_width_px,
        "cervix_fraction": frame.cervix_fraction,
        "cervix_box": list(frame.cervix_box),
        "frame": [w, h],
        "scene_seed": frame.scene_seed,
        "noise": {"gain": gain, "floor": floor},
        "denoise": {"sigma_colour": sigma_colour, "chroma_sigma": chroma},
        "sharpen": {"amount": amount, "sigma": radius},
        "jpeg_quality": quality,
        "blurred": blur is not None,
        "speculum_sharp": blur is not None and speculum_sharp,
    }
    return DevicePhoto(jpeg, decoded, frame.cervix_box, meta)


def device_photo(
    atlas: np.ndarray,
    box: PixelBox,
    rng: np.random.Generator,
    stage: str = "acetic",
    blur: Blur | None = None,
    speculum_sharp: bool = False,
) -> DevicePhoto:
    """``compose`` then ``capture`` in one call."""
    return capture(compose(atlas, box, rng, stage), rng, blur, speculum_sharp)
