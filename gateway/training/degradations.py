"""The degradation model: how a sharp photo becomes a "not sharp" example, and what both classes share.

Blur sizes are relative to the width of the cervix box (``w``, pixels in the degraded image), so a degradation
means the same at every photo resolution; the focus model sees the cervix crop resized to a fixed size, where
``w`` is about 320 px (384 input, 10 % margins):

* ``defocus``: a disk PSF (the defocus of a thin lens), radius ``0.004 w .. 0.02 w`` (about 1.3 .. 6.4 px at the
  model input; the mild end is about what the eye calls soft at 640 px), log-uniform so mild blur is well
  represented;
* ``motion``: a PSF of path length ``0.012 w .. 0.06 w`` (4 .. 19 px at the input), any angle: half the draws a
  straight line, half a circular arc turning ``0.6 .. pi`` radians (a hand's tremor during the exposure traces a
  curve, not a line);
* ``cervix_blur``: defocus of ``0.005 w .. 0.025 w`` inside a feathered ellipse inscribed in the cervix box, the
  speculum and walls around it left sharp (the camera focused on the wrong plane);
* ``sharp``: no blur.

Blur acts on scene radiance: clipped highlights (specular glints on wet tissue, brighter than white) are boosted
before the blur and clipped after it, so a defocused glint becomes a larger saturated patch with a hard edge, as
in real blurry photos, not a faint smudge.

Then, for every class alike: a veiling haze (0..20 % towards the mean), sensor noise (Gaussian, std 0..6 levels),
crisp specular glints with probability 0.5, drawn marks with probability 0.6 (arrows, outlines, a timestamp: crisp,
as they are drawn after capture; they must not read as focus), and JPEG at quality 40..95. So neither haze, noise,
glints, compression nor marks tell the classes apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

VERSION = 2
"""Bumped whenever a draw changes (2: curved motion, motion up to 6 %): cached training samples are redone."""
Kind = Literal["sharp", "defocus", "motion", "cervix_blur"]
KINDS: tuple[Kind, ...] = ("sharp", "defocus", "motion", "cervix_blur")
BLUR_RANGES: dict[Kind, tuple[float, float]] = {
    "sharp": (0.0, 0.0),
    "defocus": (0.004, 0.02),
    "motion": (0.012, 0.06),
    "cervix_blur": (0.005, 0.025),
}
"""Blur size (disk radius, or motion path length) as a fraction of the cervix box width."""
ARC_PROBABILITY = 0.5
ARC_TURN = (0.6, math.pi)
"""A curved motion path turns by this many radians (uniform) from start to end."""
NOISE_STD = (0.0, 6.0)
HAZE = (0.0, 0.2)
GLINTS_PROBABILITY = 0.5
HIGHLIGHT_GAIN = 4.0
JPEG_QUALITY = (40, 95)
MARKS_PROBABILITY = 0.6
PixelBox = tuple[float, float, float, float]
"""x0, y0, x1, y1 in pixels."""


@dataclass(frozen=True)
class Degradation:
    """One draw of the degradation model."""

    kind: Kind
    blur: float
    """Disk radius or motion length as a fraction of the cervix box width (0 for sharp)."""
    angle: float
    """Motion direction, degrees."""
    noise_std: float
    jpeg_quality: int
    marks: bool
    glints: bool = False
    haze: float = 0.0
    curve: float = 0.0
    """Motion only: how far the path turns, radians (0: a straight line)."""
    per_channel: bool = False
    """Highlights boosted channel by channel (a sensor clips each channel) instead of every channel of a pixel by
    its brightest one; never drawn by ``sample``, set by a training draw that asks for it."""

    @property
    def not_sharp(self) -> bool:
        return self.kind != "sharp"


def sample(kind: Kind, rng: np.random.Generator) -> Degradation:
    """Draw a degradation of ``kind`` (blur size log-uniform in its range)."""
    lo, hi = BLUR_RANGES[kind]
    blur = 0.0 if kind == "sharp" else float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return Degradation(
        kind=kind,
        blur=blur,
        angle=float(rng.uniform(0.0, 180.0)),
        noise_std=float(rng.uniform(*NOISE_STD)),
        jpeg_quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
        marks=bool(rng.random() < MARKS_PROBABILITY),
        glints=bool(rng.random() < GLINTS_PROBABILITY),
        haze=float(rng.uniform(*HAZE)),
        curve=float(rng.uniform(*ARC_TURN)) if kind == "motion" and rng.random() < ARC_PROBABILITY else 0.0,
    )


def _subpixels(n: int, ss: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centres (x, y) of an ``n`` x ``n`` kernel, relative to its centre, ``ss`` per pixel."""
    coords = (np.arange(n * ss, dtype=np.float64) + 0.5) / ss - n / 2
    return coords[None, :], coords[:, None]


def _average(covered: np.ndarray, n: int, ss: int = 8) -> np.ndarray:
    kernel = covered.astype(np.float32).reshape(n, ss, n, ss).mean(axis=(1, 3))
    out: np.ndarray = kernel / kernel.sum()
    return out


def disk_kernel(radius: float) -> np.ndarray:
    """A normalised disk PSF of ``radius`` pixels, anti-aliased by 8x8 supersampling (exactly symmetric)."""
    r = max(radius, 0.5)
    n = 2 * math.ceil(r) + 1
    x, y = _subpixels(n)
    return _average(x * x + y * y <= r * r, n)


def motion_kernel(length: float, angle: float, curve: float = 0.0) -> np.ndarray:
    """A normalised motion PSF: a path ``length`` pixels long and 1 wide, heading ``angle`` degrees, straight
    (anti-aliased) or, with ``curve`` radians of turn, a circular arc (``arc_kernel``)."""
    if curve > 1e-3:
        return arc_kernel(length, angle, curve)
    n = max(3, 2 * math.ceil(length / 2) + 1)
    x, y = _subpixels(n)
    ux, uy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    t = np.clip(x * ux + y * uy, -length / 2, length / 2)
    return _average((x - t * ux) ** 2 + (y - t * uy) ** 2 <= 0.25, n)


def arc_kernel(length: float, angle: float, turn: float) -> np.ndarray:
    """A circular arc ``length`` pixels long that turns ``turn`` radians, its chord at ``angle`` degrees, centred
    on its centroid (the photo does not shift), drawn as points 1/8 px apart splatted bilinearly."""
    radius = length / turn
    t = np.linspace(-turn / 2, turn / 2, max(64, math.ceil(8 * length)))
    x, y = radius * np.sin(t), radius * (1.0 - np.cos(t))
    x, y = x - x.mean(), y - y.mean()
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x, y = x * c - y * s, x * s + y * c
    half = math.ceil(max(np.abs(x).max(), np.abs(y).max())) + 1
    n = 2 * half + 1
    kernel = np.zeros((n, n), np.float64)
    gx, gy = x + half, y + half
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    fx, fy = gx - x0, gy - y0
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weight)
    out: np.ndarray = (kernel / kernel.sum()).astype(np.float32)
    return out


def convolve(image: np.ndarray, kernel: np.ndarray, per_channel: bool = False) -> np.ndarray:
    """Blur in radiance: highlights near clipping are boosted first and everything is clipped after (a pixel's
    channels by its brightest one, or each by its own level with ``per_channel``)."""
    x = image.astype(np.float32)
    peak = x.max(axis=2, keepdims=True) if x.ndim == 3 and not per_channel else x
    boost = 1.0 + (HIGHLIGHT_GAIN - 1.0) * np.clip((peak - 225.0) / 25.0, 0.0, 1.0)
    blurred = cv2.filter2D(x * boost, -1, kernel, borderType=cv2.BORDER_REFLECT)
    out: np.ndarray = np.clip(blurred + 0.5, 0, 255).astype(np.uint8)
    return out


def cervix_mask(shape: tuple[int, int], box: PixelBox, feather: float = 0.08) -> np.ndarray:
    """``[H, W]`` float32 in 0..1: an ellipse inscribed in ``box`` (90 % of it), edges feathered."""
    h, w = shape
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), np.float32)
    centre = (round((x0 + x1) / 2), round((y0 + y1) / 2))
    axes = (max(1, round(0.45 * (x1 - x0))), max(1, round(0.45 * (y1 - y0))))
    cv2.ellipse(mask, centre, axes, 0.0, 0.0, 360.0, 1.0, -1)
    sigma = max(1.0, feather * min(x1 - x0, y1 - y0))
    blurred: np.ndarray = cv2.GaussianBlur(mask, (0, 0), sigma)
    return blurred


def blur(image: np.ndarray, box: PixelBox, d: Degradation) -> np.ndarray:
    """The optical part: blur as ``d`` says, sized relative to the box width."""
    if d.kind == "sharp":
        return image
    width = max(1.0, box[2] - box[0])
    size = d.blur * width
    if d.kind == "motion":
        return convolve(image, motion_kernel(size, d.angle, d.curve), d.per_channel)
    blurred = convolve(image, disk_kernel(size), d.per_channel)
    if d.kind == "defocus":
        return blurred
    mask = cervix_mask(image.shape[:2], box)[:, :, None]
    mixed = image.astype(np.float32) * (1.0 - mask) + blurred.astype(np.float32) * mask
    out: np.ndarray = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return out


def add_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    if std <= 0:
        return image
    noisy = image.astype(np.float32) + rng.normal(0.0, std, image.shape).astype(np.float32)
    out: np.ndarray = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    return out


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("JPEG decoding failed")
    return decoded


_MARK_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 255, 255), (255, 255, 0), (255, 255, 255), (40, 60, 255))


def draw_marks(image: np.ndarray, rng: np.random.Generator, box: PixelBox | None = None) -> np.ndarray:
    """Crisp marks as atlas and annotation tools draw them: arrows, a lesion outline, a timestamp, a label."""
    out: np.ndarray = image.copy()
    h, w = out.shape[:2]
    x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, float(w), float(h))
    bw, bh = max(8.0, x1 - x0), max(8.0, y1 - y0)
    thick = max(1, round(w / 400))

    def point() -> tuple[int, int]:
        return int(rng.uniform(x0, x0 + bw)), int(rng.uniform(y0, y0 + bh))

    def colour() -> tuple[int, int, int]:
        return _MARK_COLOURS[int(rng.integers(len(_MARK_COLOURS)))]

    for _ in range(int(rng.integers(0, 3))):
        x, y = point()
        length = rng.uniform(0.05, 0.15) * bw
        angle = rng.uniform(0, 2 * math.pi)
        tail = (int(x + length * math.cos(angle)), int(y + length * math.sin(angle)))
        cv2.arrowedLine(out, tail, (x, y), colour(), thick + 1, cv2.LINE_AA, tipLength=0.3)
    if rng.random() < 0.5:
        cx, cy = point()
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.08, 0.2, n) * bw
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).astype(np.int32)
        cv2.polylines(out, [pts], True, colour(), thick, cv2.LINE_AA)
    if rng.random() < 0.6:
        text = f"X{int(rng.integers(1, 20)):02d}  {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
        org = (int(rng.uniform(0, 0.6) * w), int(rng.uniform(0.05, 1.0) * h))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.5, 1.2) * w / 800, colour(), thick + 1)
    return out


def add_haze(image: np.ndarray, amount: float) -> np.ndarray:
    """Veiling glare: the image pulled ``amount`` of the way towards its mean colour."""
    if amount <= 0:
        return image
    x = image.astype(np.float32)
    mean = x.reshape(-1, x.shape[-1]).mean(axis=0) if x.ndim == 3 else x.mean()
    out: np.ndarray = np.clip(x * (1 - amount) + mean * amount + 0.5, 0, 255).astype(np.uint8)
    return out


def draw_glints(image: np.ndarray, rng: np.random.Generator, box: PixelBox | None = None) -> np.ndarray:
    """Small crisp specular highlights (saturated white ellipses) over the cervix region."""
    out: np.ndarray = image.copy()
    h, w = out.shape[:2]
    x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, float(w), float(h))
    scale = max(1.0, (x1 - x0) / 300)
    for _ in range(int(rng.integers(5, 40))):
        centre = (int(rng.uniform(x0, x1)), int(rng.uniform(y0, y1)))
        axes = (max(1, round(rng.uniform(1, 6) * scale)), max(1, round(rng.uniform(1, 3) * scale)))
        cv2.ellipse(out, centre, axes, float(rng.uniform(0, 180)), 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
    return out


def degrade(image: np.ndarray, box: PixelBox, d: Degradation, rng: np.random.Generator) -> np.ndarray:
    """Blur (per ``d.kind``), then haze, noise, glints, marks and JPEG, which both classes get alike."""
    out = add_noise(add_haze(blur(image, box, d), d.haze), d.noise_std, rng)
    if d.glints:
        out = draw_glints(out, rng, box)
    if d.marks:
        out = draw_marks(out, rng, box)
    return jpeg(out, d.jpeg_quality)
