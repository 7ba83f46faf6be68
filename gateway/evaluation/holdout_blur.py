"""The independent blur generator of ``evaluate``: held-out blur that no model was trained on or tuned with.

Written apart from the training degradation model (``gateway/training/degradations.py``), from which it imports
nothing: its own kernels, its own radiance and noise model, its own random streams (Philox, keyed by a text key).
It must never be used for training or for choosing a threshold. Its code stays apart, but since degradation model 2
(focus classifier 1.2.0) the training draws also hold circular arcs of nearly the same form and range (turning
0.6-3.1 rad, paths of 1.2-6 %), so ``arc_motion`` now measures blur of a trained kind, not unseen blur.

Families, sized as a fraction of the cervix width ``w`` (the cervix box width in pixels of the image blurred),
each drawn log-uniform in its range so that mild blur is well represented:

========================  =====================================  ==========  ==============================
family                    extent (``extent_px``)                 range of w  blur type (guidance)
========================  =====================================  ==========  ==============================
``gaussian``              Gaussian sigma                         0.3-1.5 %   ``defocus``
``disk``                  disk (thin-lens defocus) radius        0.5-2.5 %   ``defocus``
``linear_motion``         path length, any angle                 1.5-6 %     ``motion``
``arc_motion``            arc length, sweep 45-180 deg           2-6 %       ``motion``
``cervix_disk``           disk radius, cervix only               1-3 %       ``defocus``
``sharp``                 none (a control)                       -           None
========================  =====================================  ==========  ==============================

The blur acts on linear radiance: sRGB gamma is undone, clipped highlights (specular glints, brighter than the
sensor's white) get a radiance gain drawn per photo, the kernel is applied, and the result is clipped and
re-encoded. So a defocused or streaked glint stays a saturated patch or streak, as through a real lens.
``cervix_disk`` blurs an ellipse inscribed in the cervix box (full strength inside 80 % of its radius, a smooth
ramp to its rim); every pixel outside the ellipse is returned unchanged.

``finish`` is the capture after the optics for atlas photos: Poisson-Gaussian sensor noise on linear radiance and
JPEG 75-95, given to the blurred draws and the sharp controls alike. Device-like photos take the blur only
(``blur``) and go through the phone pipeline instead.

Usage::

    rng = holdout_blur.stream(seed, photo.name, index)
    out = holdout_blur.degrade(image, box_px, "arc_motion", rng)   # -> Degraded(image, label)
    out.label.blur_type, out.label.extent_px                         # "motion", 23.4
    holdout_blur.draws(image, box_px, seed, photo.name, count=10)    # 2 draws of each blurred family
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Family = Literal["sharp", "gaussian", "disk", "linear_motion", "arc_motion", "cervix_disk"]
BlurType = Literal["motion", "defocus"]
BLURRED: tuple[Family, ...] = ("gaussian", "disk", "linear_motion", "arc_motion", "cervix_disk")
RANGES: dict[Family, tuple[float, float]] = {
    "gaussian": (0.003, 0.015),
    "disk": (0.005, 0.025),
    "linear_motion": (0.015, 0.06),
    "arc_motion": (0.02, 0.06),
    "cervix_disk": (0.01, 0.03),
}
"""Extent as a fraction of the cervix width: sigma, radius, or path length."""
BLUR_TYPE: dict[Family, BlurType | None] = {
    "sharp": None,
    "gaussian": "defocus",
    "disk": "defocus",
    "linear_motion": "motion",
    "arc_motion": "motion",
    "cervix_disk": "defocus",
}
ARC_SWEEP_DEG = (45.0, 180.0)
HIGHLIGHT_GAIN = (1.5, 5.0)
"""Radiance of a clipped highlight relative to the sensor's white, drawn log-uniform per photo."""
HIGHLIGHT_RAMP = (248.0, 255.0)
"""The brightest channel's sRGB level over which the gain ramps in (1 below, full at the top)."""
CERVIX_CORE = 0.8
"""``cervix_disk`` is at full strength inside this fraction of the ellipse's radius."""
SHOT_NOISE = (2e-5, 1e-3)
"""Poisson-Gaussian noise: variance = shot * radiance + read**2 (linear, white = 1), both log-uniform."""
READ_NOISE = (3e-4, 3e-3)
JPEG_QUALITY = (75, 95)
PixelBox = tuple[float, float, float, float]
"""x0, y0, x1, y1 in pixels."""


@dataclass(frozen=True)
class BlurLabel:
    """What one draw did: the label an evaluation row scores against."""

    family: Family
    extent_px: float
    """Gaussian sigma, disk radius or path length in pixels (0 for ``sharp``)."""
    cervix_width_px: float
    angle_deg: float = 0.0
    """Direction of motion (linear: of the path; arc: of its chord)."""
    sweep_deg: float = 0.0
    """The arc's turn (``arc_motion`` only)."""
    highlight_gain: float = 1.0

    @property
    def blur_type(self) -> BlurType | None:
        """``motion`` or ``defocus``: what the recapture guidance should say; None for a sharp control."""
        return BLUR_TYPE[self.family]

    @property
    def blurred(self) -> bool:
        return self.family != "sharp"

    @property
    def fraction(self) -> float:
        """The extent as a fraction of the cervix width."""
        return self.extent_px / self.cervix_width_px if self.cervix_width_px > 0 else 0.0


@dataclass(frozen=True)
class Degraded:
    image: np.ndarray
    """BGR uint8, the same size as the input."""
    label: BlurLabel


# ------------------------------------------------------------------------------------------ randomness


def stream(seed: int, key: str, index: int) -> np.random.Generator:
    """A Philox stream for draw ``index`` of the item named ``key``: independent of the order of the items."""
    digest = hashlib.blake2b(f"holdout-blur|{seed}|{key}|{index}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest, "little")))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample(family: Family, cervix_width_px: float, rng: np.random.Generator) -> BlurLabel:
    """Draw the parameters of one ``family`` blur for a cervix ``cervix_width_px`` wide."""
    gain = _log_uniform(rng, *HIGHLIGHT_GAIN)
    if family == "sharp":
        return BlurLabel("sharp", 0.0, cervix_width_px, highlight_gain=gain)
    fraction = _log_uniform(rng, *RANGES[family])
    angle = float(rng.uniform(0.0, 360.0))
    sweep = float(rng.uniform(*ARC_SWEEP_DEG)) if family == "arc_motion" else 0.0
    return BlurLabel(family, fraction * cervix_width_px, cervix_width_px, angle, sweep, gain)


# ------------------------------------------------------------------------------------------ kernels


def gaussian_taps(sigma: float) -> np.ndarray:
    """1-D Gaussian taps integrated over each pixel (exact for small sigma), radius 4 sigma, sum 1."""
    radius = max(1, math.ceil(4.0 * sigma))
    edges = (np.arange(-radius, radius + 2, dtype=np.float64) - 0.5) / (sigma * math.sqrt(2.0))
    cdf = 0.5 * (1.0 + np.array([math.erf(e) for e in edges]))
    taps = np.diff(cdf)
    out: np.ndarray = (taps / taps.sum()).astype(np.float32)
    return out


def disk_psf(radius: float) -> np.ndarray:
    """A disk of ``radius`` px; each pixel weighted by its approximate coverage (1 px linear edge), sum 1."""
    half = math.ceil(radius) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    weight = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    out: np.ndarray = (weight / weight.sum()).astype(np.float32)
    return out


def _splat(points: np.ndarray) -> np.ndarray:
    """Points (N x 2, x and y in px, centred on their mean) splatted bilinearly into an odd square kernel."""
    points = points - points.mean(axis=0)
    half = math.ceil(float(np.abs(points).max())) + 2
    size = 2 * half + 1
    kernel = np.zeros((size, size), np.float64)
    x, y = points[:, 0] + half, points[:, 1] + half
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    out: np.ndarray = (kernel / kernel.sum()).astype(np.float32)
    return out


def line_psf(length: float, angle_deg: float) -> np.ndarray:
    """The path of a uniform straight motion ``length`` px long at ``angle_deg``, sampled every 0.05 px."""
    n = max(2, math.ceil(length / 0.05) + 1)
    t = np.linspace(-length / 2, length / 2, n)
    a = math.radians(angle_deg)
    return _splat(np.stack([t * math.cos(a), t * math.sin(a)], axis=1))


def arc_psf(length: float, sweep_deg: float, angle_deg: float) -> np.ndarray:
    """The path of a uniform motion along a circular arc ``length`` px long turning by ``sweep_deg``."""
    sweep = math.radians(max(sweep_deg, 1e-3))
    radius = length / sweep
    n = max(2, math.ceil(length / 0.05) + 1)
    theta = np.linspace(-sweep / 2, sweep / 2, n)
    # the arc bulges along +y with its chord along x, then the whole path is turned to angle_deg
    x, y = radius * np.sin(theta), radius * (1 - np.cos(theta))
    a = math.radians(angle_deg)
    return _splat(np.stack([x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)], axis=1))


def psf(label: BlurLabel) -> np.ndarray:
    """The 2-D kernel of ``label`` (a 1x1 identity for ``sharp``; the Gaussian as its outer product)."""
    if label.family == "sharp":
        return np.ones((1, 1), np.float32)
    if label.family == "gaussian":
        taps = gaussian_taps(label.extent_px)
        return np.outer(taps, taps)
    if label.family in ("disk", "cervix_disk"):
        return disk_psf(label.extent_px)
    if label.family == "linear_motion":
        return line_psf(label.extent_px, label.angle_deg)
    return arc_psf(label.extent_px, label.sweep_deg, label.angle_deg)


# ------------------------------------------------------------------------------------------ radiance


_DECODE = np.where(
    (v := np.arange(256, dtype=np.float64) / 255.0) <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4
).astype(np.float32)


def to_linear(image: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> linear radiance, float32, white = 1."""
    out: np.ndarray = _DECODE[image]
    return out


def to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear radiance -> sRGB uint8 (clipped at white, as a sensor clips)."""
    x = np.clip(linear, 0.0, 1.0)
    encoded = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    out: np.ndarray = np.clip(encoded * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def radiance(image: np.ndarray, gain: float) -> np.ndarray:
    """Linear radiance with clipped highlights restored to ``gain`` times white (ramped in near the top)."""
    linear = to_linear(image)
    peak = image.max(axis=2, keepdims=True).astype(np.float32) if image.ndim == 3 else image.astype(np.float32)
    lo, hi = HIGHLIGHT_RAMP
    ramp = np.clip((peak - lo) / (hi - lo), 0.0, 1.0)
    out: np.ndarray = linear * (1.0 + (gain - 1.0) * ramp)
    return out


def convolve(linear: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """True convolution (the kernel flipped for OpenCV's correlation), mirrored at the borders."""
    out: np.ndarray = cv2.filter2D(
        linear, cv2.CV_32F, np.ascontiguousarray(kernel[::-1, ::-1]), borderType=cv2.BORDER_REFLECT_101
    )
    return out


def cervix_weight(shape: tuple[int, int], box: PixelBox) -> np.ndarray:
    """``[H, W]`` float32: 1 inside ``CERVIX_CORE`` of the ellipse inscribed in ``box``, a cosine ramp to 0 at its
    rim, 0 outside."""
    h, w = shape
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax, ay = max(1.0, (x1 - x0) / 2), max(1.0, (y1 - y0) / 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rho = np.hypot((xx + 0.5 - cx) / ax, (yy + 0.5 - cy) / ay)
    t = np.clip((1.0 - rho) / (1.0 - CERVIX_CORE), 0.0, 1.0)
    out: np.ndarray = (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)
    return out


def blur(image: np.ndarray, box: PixelBox, label: BlurLabel) -> np.ndarray:
    """The optical part of ``label`` on BGR uint8 ``image`` (cervix box ``box`` in pixels), on linear radiance."""
    if label.family == "sharp":
        same: np.ndarray = image.copy()
        return same
    light = radiance(image, label.highlight_gain)
    blurred = convolve(light, psf(label))
    if label.family != "cervix_disk":
        return to_srgb(blurred)
    weight = cervix_weight(image.shape[:2], box)
    wc = weight[:, :, None] if image.ndim == 3 else weight
    out = to_srgb(light * (1.0 - wc) + blurred * wc)
    out[weight <= 0.0] = image[weight <= 0.0]
    return out


# ------------------------------------------------------------------------------------------ capture


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise (Poisson-Gaussian on linear radiance, per channel) and JPEG at a drawn quality."""
    shot = _log_uniform(rng, *SHOT_NOISE)
    read = _log_uniform(rng, *READ_NOISE)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    linear = to_linear(image)
    std = np.sqrt(shot * linear + read * read)
    noisy = to_srgb(linear + std * rng.standard_normal(linear.shape, dtype=np.float32))
    ok, data = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else None
    if decoded is None:
        raise ValueError("JPEG round trip failed")
    out: np.ndarray = decoded
    return out


def degrade(
    image: np.ndarray, box: PixelBox, family: Family, rng: np.random.Generator, capture: bool = True
) -> Degraded:
    """One draw of ``family`` (sized by the width of ``box``); ``capture`` adds ``finish`` after the optics."""
    label = sample(family, max(1.0, box[2] - box[0]), rng)
    out = blur(image, box, label)
    return Degraded(finish(out, rng) if capture else out, label)


def draws(
    image: np.ndarray,
    box: PixelBox,
    seed: int,
    key: str,
    count: int = 10,
    families: tuple[Family, ...] = BLURRED,
    capture: bool = True,
) -> list[Degraded]:
    """``count`` draws for the item named ``key``, cycling through ``families`` (10 = two of each blurred family)."""
    return [
        degrade(
            image, box, families[i % len(families)], stream(seed, f"{families[i % len(families)]}|{key}", i), capture
        )
        for i in range(count)
    ]
