"""The degradation model: how a sharp photo becomes a "not sharp" example, and what both classes share.

Blur sizes are relative to the width of the cervix box (``w``, pixels in the degraded image), so a degradation
means the same at every photo resolution; the focus model sees the cervix crop resized to a fixed size, where
``w`` is about 320 px (384 input, 10 % margins):

* ``defocus``: a disk PSF (the defocus of a thin lens), radius ``0.004 w .. 0.02 w`` (about 1.3 .. 6.4 px at the
  model input; the mild end is about what the eye calls soft at 640 px), log-uniform so mild blur is well
  represented. A third of the draws (since version 3) tilt the plane of focus instead: the radius grows from 0 at
  one edge of the cervix to twice the drawn radius at the other, in any direction (a close, curved cervix whose
  near side is in focus and far side is not, as in real photos judged blurry). Since version 4 the drawn radius
  is the one at the cervix centre, so a tilted draw is labelled by the blur in the middle of the cervix, as
  blurred as an even draw of the same radius (version 3 drew the far edge's radius from 0.8 %, which left the
  mildest tilts sharp over most of the cervix);
* ``motion``: a PSF of path length ``0.012 w .. 0.06 w`` (4 .. 19 px at the input), any angle, in three equal
  shares: a straight line, a circular arc turning ``0.6 .. pi`` radians, and (since version 3) camera shake, a
  path whose heading drifts and now and then jerks and whose speed varies, so the hand's slower moments leave
  brighter parts of the streak (``shake_kernel``). A shake path's size is its extent, the longest distance
  between two of its points (since version 4; version 3 sized its length, so a path that turned back on itself
  streaked less than a line of the same size);
* ``cervix_blur``: defocus of ``0.01 w .. 0.025 w`` (since version 4; from ``0.005 w`` before) inside a
  feathered ellipse inscribed in the cervix box, the speculum and walls around it left sharp (the camera focused
  on the wrong plane);
* ``sharp``: no blur.

Blur acts on an approximation of scene radiance, in gamma space: pixels near clipping in any channel (225 and
up) are boosted before the blur and everything is clipped after it, so a defocused glint becomes a larger
saturated patch with a hard edge, as in real blurry photos, not a faint smudge. Versions 3 and 4 blurred in
linear radiance and boosted only glints clipped in every channel, the more faithful optics (this one also swells
bright red or acetowhite tissue: on 81 of the 142 sharp photos a 1 % defocus more than tripled the saturated
area); the models trained on them scored the validation patients' real sharp photos lower and separated the real
photos no better (seed 0, ROC AUC 0.826 and 0.827 against 0.834), so version 5 keeps their shapes (camera shake,
tilted focus) with these optics.

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

VERSION = 5
"""Bumped whenever a draw changes (2: curved motion, motion up to 6 %; 3: blur in linear radiance, camera shake,
tilted focus; 4: a tilt labelled by the blur at the cervix centre, a shake sized by its extent, cervix-only blur
from 1 %, the issue's lower bound for blur confined to the cervix; 5: version 4's shapes and ranges with version
2's optics): cached training samples are redone."""
Kind = Literal["sharp", "defocus", "motion", "cervix_blur"]
KINDS: tuple[Kind, ...] = ("sharp", "defocus", "motion", "cervix_blur")
BLUR_RANGES: dict[Kind, tuple[float, float]] = {
    "sharp": (0.0, 0.0),
    "defocus": (0.004, 0.02),
    "motion": (0.012, 0.06),
    "cervix_blur": (0.01, 0.025),
}
"""Blur size (disk radius, or motion path length) as a fraction of the cervix box width."""
MotionShape = Literal["line", "arc", "shake"]
MOTION_SHAPES: tuple[MotionShape, ...] = ("line", "arc", "shake")
"""Drawn with equal probability."""
ARC_TURN = (0.6, math.pi)
"""A curved motion path turns by this many radians (uniform) from start to end."""
SHAKE_DRIFT = (0.5, 3.0)
"""How far a shake path's heading drifts in all (radians, uniform), besides its jerks."""
SHAKE_JERKS = 2
"""At most this many abrupt turns (0..2 drawn uniformly) of 1-2.5 radians either way."""
TILT_PROBABILITY = 1 / 3
"""The share of defocus draws that tilt the plane of focus: radius 0 at one edge of the cervix, the drawn radius
at its centre and twice that at the far edge."""
TILT_LEVELS = 5
"""Blur levels from 0 to the far edge's radius, interpolated per pixel."""
NOISE_STD = (0.0, 6.0)
HAZE = (0.0, 0.2)
GLINTS_PROBABILITY = 0.5
HIGHLIGHT_GAIN = 4.0
HIGHLIGHT_LEVEL = (225.0, 250.0)
"""A pixel whose brightest channel is above the first level (fully at the second) is boosted by up to
``HIGHLIGHT_GAIN`` before a blur."""
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
    shake: int | None = None
    """Motion only: the seed of a camera-shake path (``shake_kernel``), None for a line or an arc."""
    tilt: bool = False
    """Defocus only: the blur grows across the cervix in the direction ``angle``, from 0 at its near edge through
    ``blur`` at its centre to twice that at its far edge."""

    @property
    def not_sharp(self) -> bool:
        return self.kind != "sharp"


def sample(kind: Kind, rng: np.random.Generator) -> Degradation:
    """Draw a degradation of ``kind`` (blur size log-uniform in its range)."""
    lo, hi = BLUR_RANGES[kind]
    blur = 0.0 if kind == "sharp" else float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    angle = float(rng.uniform(0.0, 180.0))
    noise_std = float(rng.uniform(*NOISE_STD))
    jpeg_quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    marks, glints = bool(rng.random() < MARKS_PROBABILITY), bool(rng.random() < GLINTS_PROBABILITY)
    haze = float(rng.uniform(*HAZE))
    curve, shake, tilt = 0.0, None, False
    if kind == "motion":
        shape = MOTION_SHAPES[int(rng.integers(len(MOTION_SHAPES)))]
        curve = float(rng.uniform(*ARC_TURN)) if shape == "arc" else 0.0
        shake = int(rng.integers(2**31)) if shape == "shake" else None
    elif kind == "defocus" and rng.random() < TILT_PROBABILITY:
        tilt = True
        angle = float(rng.uniform(0.0, 360.0))
    return Degradation(kind, blur, angle, noise_std, jpeg_quality, marks, glints, haze, curve, shake, tilt)


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


def motion_kernel(length: float, angle: float, curve: float = 0.0, shake: int | None = None) -> np.ndarray:
    """A normalised motion PSF: a path ``length`` pixels long and 1 wide, heading ``angle`` degrees, straight
    (anti-aliased), or with ``curve`` radians of turn a circular arc (``arc_kernel``), or with a ``shake`` seed
    camera shake (``shake_kernel``)."""
    if shake is not None:
        return shake_kernel(length, angle, shake)
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
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return _splat(x * c - y * s, x * s + y * c)


def shake_kernel(length: float, angle: float, seed: int, steps: int = 512) -> np.ndarray:
    """Camera shake: equal time steps along a path whose heading starts at ``angle`` degrees and drifts (a smooth
    random turn of ``SHAKE_DRIFT`` radians in all, plus up to ``SHAKE_JERKS`` abrupt turns) and whose speed varies
    (a smooth random factor of 0.3-1.7), so the slower moments of the hand leave brighter parts of the streak;
    scaled so that its extent (the longest distance between two of its points) is ``length`` pixels, as a
    line's is, centred on its centroid, splatted bilinearly."""
    rng = np.random.default_rng(seed)
    drift = np.cumsum(_smooth(rng.normal(size=steps), steps / 8))
    drift *= rng.uniform(*SHAKE_DRIFT) / max(1e-9, float(np.abs(drift).max())) * rng.choice([-1.0, 1.0])
    heading = math.radians(angle) + drift
    for at in rng.integers(steps // 8, steps - steps // 8, int(rng.integers(SHAKE_JERKS + 1))):
        heading[at:] += rng.uniform(1.0, 2.5) * rng.choice([-1.0, 1.0])
    wobble = _smooth(rng.normal(size=steps), steps / 10)
    speed = 1.0 + 0.7 * wobble / max(1e-9, float(np.abs(wobble).max()))
    x, y = np.cumsum(speed * np.cos(heading)), np.cumsum(speed * np.sin(heading))
    scale = length / max(1e-9, extent(x, y))
    return _splat(x * scale, y * scale)


def extent(x: np.ndarray, y: np.ndarray) -> float:
    """The longest distance between two of the points: their widest projection over directions 1 degree apart
    (within 0.004 % of it)."""
    turns = np.linspace(0.0, math.pi, 180, endpoint=False)
    projected = np.outer(x, np.cos(turns)) + np.outer(y, np.sin(turns))
    return float((projected.max(axis=0) - projected.min(axis=0)).max())


def _smooth(noise: np.ndarray, sigma: float) -> np.ndarray:
    """``noise`` low-passed by a Gaussian of ``sigma`` samples (edges reflected), zero-mean."""
    out: np.ndarray = cv2.GaussianBlur(noise.reshape(1, -1).astype(np.float64), (0, 0), sigma).ravel()
    return out - out.mean()


def _splat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A normalised kernel from equally weighted path points (pixels), centred on their centroid: each point is
    shared bilinearly among its four nearest pixels."""
    x, y = x - x.mean(), y - y.mean()
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


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Blur in (approximate) radiance: highlights near clipping are boosted first and everything is clipped after."""
    x = image.astype(np.float32)
    peak = x.max(axis=2, keepdims=True) if x.ndim == 3 else x
    lo, hi = HIGHLIGHT_LEVEL
    boost = 1.0 + (HIGHLIGHT_GAIN - 1.0) * np.clip((peak - lo) / (hi - lo), 0.0, 1.0)
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


def tilted_defocus(image: np.ndarray, box: PixelBox, radius: float, angle: float) -> np.ndarray:
    """Defocus that grows across the cervix: disk radius 0 at the edge of ``box`` opposite the direction ``angle``
    (degrees) and ``radius`` pixels at the edge it points to (constant beyond either edge), interpolated between
    ``TILT_LEVELS`` blurred copies."""
    levels = [image.astype(np.float32)]
    levels += [
        convolve(image, disk_kernel(radius * k / (TILT_LEVELS - 1))).astype(np.float32) for k in range(1, TILT_LEVELS)
    ]
    h, w = image.shape[:2]
    ux, uy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x0, y0, x1, y1 = box
    extent = max(1.0, abs((x1 - x0) * ux) + abs((y1 - y0) * uy))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    position = np.clip(((xx - (x0 + x1) / 2) * ux + (yy - (y0 + y1) / 2) * uy) / extent + 0.5, 0.0, 1.0)
    level = (position * (TILT_LEVELS - 1))[:, :, None]
    out = sum(copy * np.clip(1.0 - np.abs(level - k), 0.0, 1.0) for k, copy in enumerate(levels))
    result: np.ndarray = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return result


def blur(image: np.ndarray, box: PixelBox, d: Degradation) -> np.ndarray:
    """The optical part: blur as ``d`` says, sized relative to the box width."""
    if d.kind == "sharp":
        return image
    width = max(1.0, box[2] - box[0])
    size = d.blur * width
    if d.kind == "motion":
        return convolve(image, motion_kernel(size, d.angle, d.curve, d.shake))
    if d.tilt:
        return tilted_defocus(image, box, 2.0 * size, d.angle)
    blurred = convolve(image, disk_kernel(size))
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
