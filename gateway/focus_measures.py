"""Classical (model-free) measures of focus on the cervix, in numpy and OpenCV: no torch, run at inference.

* ``glare_and_marks``: pixels whose crisp edges say nothing of the focus (saturated glints, drawn marks);
* ``blur_type``: ``motion`` or ``defocus``, from the directional energy that motion leaves;
* ``features``: a named, versioned set of focus features of the cervix (``FEATURE_SETS``), the second input of
  a fused focus model (see ``gateway.models.manifest``).

Feature set ``focus-v1`` (``FOCUS_V1``, 14 values). The cervix box is resampled to ``FEATURE_WIDTH`` px wide,
never enlarged (a smaller cervix is measured at its own resolution, and the scale is a feature): a blur of
1.5 % of the cervix width is then 9.6 px, and 0.3 % (a Gaussian's sigma) about 2 px. On the green channel,
inside an ellipse inscribed in 90 % of the box, glare and marks (``glare_and_marks``) and a rim around them left
out, as are near-black pixels:

* the energy of the five finest Laplacian-pyramid bands (about 0.5-1, 1-2, 2-4, 4-8, 8-16 px; log of the mean
  square): the multi-scale Laplacian / difference-of-Gaussians energy;
* the fine-to-coarse ratio, locally and robustly: the median over 8 px blocks with structure of the energy of
  each of the three finest bands over that of the 4-8 px band (log); crisp leftovers (instrument edges,
  blood) barely move a median;
* the directional ratio of the blur type (motion leaves anisotropic energy);
* context: the glare and mark fractions of the box, the log of the mean and of the standard deviation of the
  green channel, and the log of the scale (view width / ``FEATURE_WIDTH``, 0 when the cervix is large enough).

Feature set ``focus-v2`` (``FOCUS_V2``, 23 values): ``focus-v1``, then nine of what lies around the cervix, on
the whole frame at a long side of ``FRAME_SIDE`` px (``_around``): the energy of its three finest bands, and of
those of the surround (the box widened by half its size, less the box) with their per-block ratios and its share
of the frame.

Blur type. Motion blur removes fine detail along its direction only; defocus removes it in every direction. On
the cervix (an ellipse inscribed in its box, 80 % of it, so a sharp speculum around a defocused cervix does not
count), resampled so the box is ``TYPE_WIDTH`` px wide, the gradient structure tensors of a fine band
(Gaussian sigma ``TYPE_FINE``) and of a coarse band (sigma ``TYPE_COARSE``) are summed over the pixels that are
not glare or marks. The fine/coarse energy ratio along a unit direction ``u`` is ``u'Fu / u'Cu``; its smallest
over its largest value over all directions (the generalised eigenvalues of ``F`` and ``C``) is 1 for
isotropic loss of detail and falls with motion. Dividing by the coarse band cancels the scene's own
orientation (vessels, the os, folds). Below ``MOTION_RATIO`` the blur is ``motion``. Blur confined to the
cervix (the camera focused on the speculum) is isotropic inside the ellipse, hence ``defocus``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from gateway.assessment import BlurType, Box
from gateway.models.preprocess import shrink

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

TYPE_WIDTH = 640
"""The cervix box is resampled to this width (px) for the blur type: 1.5 % of it is 9.6 px."""
TYPE_FINE, TYPE_COARSE = 1.0, 3.0
"""Gaussian sigmas (px at ``TYPE_WIDTH``) of the fine and coarse bands."""
TYPE_INNER = 0.8
"""The blur type is measured inside an ellipse inscribed in this fraction of the cervix box."""
MOTION_RATIO = 0.8
"""Below this directional ratio (smallest / largest fine-to-coarse energy ratio) the blur is motion.
Chosen once on synthetic scenes (sharp and defocused: 0.80-0.99; motion of 1.5-6 % of the cervix: 0.43-0.69)."""
GLARE_LEVEL = 215
"""A pixel whose every BGR channel is at least this is glare."""
MARK_SATURATION = 110
"""Drawn marks: HSV saturation at least this, hue yellow to violet (tissue is red to orange)..."""
MARK_MAX_AREA = 0.01
"""...in connected patches smaller than this fraction of the view."""
MAX_VIEW_SIDE_RATIO = 2.0
"""A view's longer side is at most this many times its nominal width (odd shapes and slivers are shrunk)."""
MARK_STROKE = 15
"""Drawn strokes up to about this wide (px of the view) are marks."""
_STROKE_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (MARK_STROKE, MARK_STROKE))
_MIN_SIDE = 8


def channel_min(image: np.ndarray) -> np.ndarray:
    """Per-pixel minimum over the three channels (much faster than ``ndarray.min(axis=2)``)."""
    b, g, r = cv2.split(image)
    return cv2.min(cv2.min(b, g), r)


def channel_max(image: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over the three channels."""
    b, g, r = cv2.split(image)
    return cv2.max(cv2.max(b, g), r)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking, cubic interpolation when enlarging."""
    smaller = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if smaller else cv2.INTER_CUBIC)


def glare_and_marks(
    view: np.ndarray,
    glare_level: int = GLARE_LEVEL,
    mark_saturation: int = MARK_SATURATION,
    mark_max_area: float = MARK_MAX_AREA,
) -> Mask:
    """Glare (every channel at least ``glare_level``) and drawn marks of a BGR view: they stay crisp on a blurred
    photo. Marks are saturated non-tissue hues (yellow to violet) in small connected patches (text, arrows) or in
    thin strokes (an outline that crosses the view: what an opening of ``MARK_STROKE`` px removes), so the
    large teal regions of a green-filter view are kept."""
    glare, marks = glare_and_marks_apart(view, glare_level, mark_saturation, mark_max_area)
    return glare | marks


def glare_and_marks_apart(
    view: np.ndarray,
    glare_level: int = GLARE_LEVEL,
    mark_saturation: int = MARK_SATURATION,
    mark_max_area: float = MARK_MAX_AREA,
) -> tuple[Mask, Mask]:
    """``glare_and_marks`` as two masks, glare and marks (a pixel may be in both)."""
    glare: Mask = channel_min(view) >= glare_level
    # OpenCV hue is 0..180: 27..150 is yellow through green, cyan, blue to violet; tissue is outside it.
    unnatural = cv2.inRange(cv2.cvtColor(view, cv2.COLOR_BGR2HSV), (27, mark_saturation, 90), (150, 255, 255))
    if not cv2.countNonZero(unnatural):  # no saturated non-tissue hue, no mark (device photos carry none)
        return glare, np.zeros_like(glare)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(unnatural, connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < mark_max_area * unnatural.size
    small[0] = False
    thin = cv2.morphologyEx(unnatural, cv2.MORPH_OPEN, _STROKE_KERNEL) == 0
    marks: Mask = (unnatural > 0) & thin
    if small.any():
        marks |= small[labels]
    return glare, marks


def finite(box: Box | None) -> Box | None:
    """``box``, or None (the central region) when a coordinate is not finite (a NaN box from a detector)."""
    return box if box is not None and all(math.isfinite(v) for v in box) else None


def box_view(image: np.ndarray, box: Box | None, width: int, margin: float = 0.0, central: float = 0.6) -> np.ndarray:
    """The region of ``box`` widened by ``margin`` of its size on each side (no box: the central ``central`` of
    the frame), resampled so that the box itself is ``width`` px wide (aspect kept)."""
    h, w = image.shape[:2]
    box = finite(box)
    if box is None:
        m = (1.0 - central) / 2
        box = (m, m, 1.0 - m, 1.0 - m)
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    left, right = (min(max(round(v * w), 0), w) for v in (x0 - mx, x1 + mx))
    top, bottom = (min(max(round(v * h), 0), h) for v in (y0 - my, y1 + my))
    scale = width / max(1.0, (x1 - x0) * w)
    if right - left < _MIN_SIDE or bottom - top < _MIN_SIDE:
        left, top, right, bottom = 0, 0, w, h
        scale = width / w
    region = image[top:bottom, left:right]
    # never more than MAX_VIEW_SIDE_RATIO times the width on a side: a sliver of a photo must not become a huge view
    scale = min(scale, MAX_VIEW_SIDE_RATIO * width / max(region.shape[:2]))
    return resize(region, max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))


def _structure_tensor(grey: F32, sigma: float, weight: F32) -> npt.NDArray[np.float64]:
    smooth = cv2.GaussianBlur(grey, (0, 0), sigma)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    wx = cv2.multiply(gx, weight)
    xx, xy, yy = (
        float(cv2.sumElems(cv2.multiply(a, b))[0]) for a, b in ((wx, gx), (wx, gy), (cv2.multiply(gy, weight), gy))
    )
    return np.array([[xx, xy], [xy, yy]])


def directional_ratio(
    view: np.ndarray, inner: float = TYPE_INNER, excluded: Mask | None = None, ellipse: Mask | None = None
) -> float:
    """Smallest / largest fine-to-coarse energy ratio over directions, inside an ellipse of ``inner`` of the
    view's size (``ellipse``, when already drawn), glare and marks (``excluded``, found here when None) left out
    (1.0 with too little to measure)."""
    h, w = view.shape[:2]
    if min(h, w) < _MIN_SIDE:
        return 1.0
    if excluded is None:
        excluded = cv2.dilate(glare_and_marks(view).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    valid = (_ellipse(h, w, inner) if ellipse is None else ellipse) & ~excluded
    if np.count_nonzero(valid) < 100:
        return 1.0
    grey, weight = view[..., 1].astype(np.float32), valid.astype(np.float32)
    fine = _structure_tensor(grey, TYPE_FINE, weight)
    coarse = _structure_tensor(grey, TYPE_COARSE, weight) + np.eye(2) * 1e-6 * float(np.trace(fine) + 1.0)
    try:
        lower = np.linalg.cholesky(coarse)
    except np.linalg.LinAlgError:
        return 1.0
    inverse = np.linalg.inv(lower)
    low, high = np.linalg.eigvalsh(inverse @ fine @ inverse.T)
    return float(low / high) if high > 0 else 1.0


FEATURE_WIDTH = 640
"""Classical focus features are measured with the cervix box at most this wide (px)."""
FEATURE_INNER = 0.9
FEATURE_LEVELS = 5
"""Laplacian-pyramid levels: bands of about 0.5-1, 1-2, 2-4, 4-8 and 8-16 px of the view."""
_STRUCTURE_FLOOR = 2.0
"""Blocks count in the per-block ratios when the RMS of their 4-8 px band exceeds this (8-bit levels)."""
FOCUS_V1 = (
    "band_0.5_1",
    "band_1_2",
    "band_2_4",
    "band_4_8",
    "band_8_16",
    "ratio_0.5_1",
    "ratio_1_2",
    "ratio_2_4",
    "directional_ratio",
    "glare_fraction",
    "mark_fraction",
    "log_mean",
    "log_std",
    "log_scale",
)
"""The names of the ``focus-v1`` features, in order."""


def _ellipse(h: int, w: int, inner: float) -> Mask:
    yy, xx = np.ogrid[0:h, 0:w]
    inside: Mask = ((xx + 0.5 - w / 2) / (inner * w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (inner * h / 2)) ** 2 <= 1.0
    return inside


def _pyramid(grey: np.ndarray, weight: np.ndarray, levels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Laplacian-pyramid bands, finest first, each with the share of valid pixels under it (0..1)."""
    out = []
    for _ in range(levels):
        h, w = grey.shape
        small = cv2.pyrDown(grey)
        band = grey - cv2.pyrUp(small, dstsize=(w, h))
        out.append((band, weight))
        grey = small
        weight = cv2.resize(weight, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    return out


def _block_energy(band: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mean square of ``band`` over the blocks of a ``size`` (w, h) grid: local energy."""
    energy: np.ndarray = cv2.resize(cv2.multiply(band, band), size, interpolation=cv2.INTER_AREA)
    return energy


def _band_measures(grey: np.ndarray, valid: Mask, levels: int, ratios_over: int = 0, ratios: int = 0) -> list[float]:
    """The log energy of each Laplacian-pyramid band (finest first; ``levels`` of them) over the valid pixels,
    then the per-block ratios of the ``ratios`` finest bands over band ``ratios_over``: the log of their median
    over the blocks of that band's grid that have structure (-10 where too little is valid)."""
    bands = _pyramid(grey, valid.astype(np.float32), levels)
    out = []
    for band, weight in bands:
        kept = weight > 0.99
        out.append(math.log(float(np.mean(np.square(band[kept]))) + 1e-6) if np.count_nonzero(kept) else -10.0)
    if not ratios:
        return out
    # per-block ratios on the grid of the coarser band (blocks of 2**ratios_over px): robust to what is crisp in
    # few blocks
    coarse, coarse_weight = bands[ratios_over]
    size = (coarse.shape[1], coarse.shape[0])
    structure = _block_energy(coarse, size)
    counted = (coarse_weight > 0.99) & (structure > _STRUCTURE_FLOOR**2)
    for k in range(ratios):
        fine = _block_energy(bands[k][0], size)
        out.append(
            math.log(float(np.median(fine[counted] / structure[counted])) + 1e-6) if counted.sum() >= 20 else -10.0
        )
    return out


def focus_v1(image: np.ndarray, box: Box | None) -> npt.NDArray[np.float32]:
    """The ``focus-v1`` features (``FOCUS_V1``) of the cervix ``box`` (normalised; None: the central region)."""
    box = finite(box)
    w = image.shape[1]
    native = (box[2] - box[0]) * w if box is not None else 0.6 * w
    width = int(max(64, min(FEATURE_WIDTH, round(native))))
    view = box_view(image, box, width)
    vh, vw = view.shape[:2]
    glare, marks = glare_and_marks_apart(view)
    spots = glare | marks
    excluded = cv2.dilate(spots.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    ellipse = _ellipse(vh, vw, FEATURE_INNER)
    valid = ellipse & ~excluded & (channel_max(view) >= 30)
    out = np.zeros(len(FOCUS_V1), np.float32)
    inside = max(1, int(np.count_nonzero(ellipse)))
    out[9] = np.count_nonzero(glare & ellipse) / inside
    out[10] = np.count_nonzero(spots & ~glare & ellipse) / inside
    out[13] = math.log(width / FEATURE_WIDTH)
    if np.count_nonzero(valid) < 100:
        out[:9] = (-10.0,) * 8 + (1.0,)
        return out
    grey = view[..., 1].astype(np.float32)
    out[:8] = _band_measures(grey, valid, FEATURE_LEVELS, ratios_over=3, ratios=3)
    out[8] = directional_ratio(view, FEATURE_INNER, excluded, ellipse)
    values = grey[valid]
    out[11] = math.log(float(values.mean()) + 1.0)
    out[12] = math.log(float(values.std()) + 1e-3)
    return out


FRAME_SIDE = 800
"""What lies around the cervix is measured on the whole frame at a long side of at most this (px), as the
Laplacian baseline sees it: on a 12 MP photo with the cervix 25-50 % of its width, a blur of 1.5 % of the cervix
width is 3-6 px there."""
SURROUND_MARGIN = 0.5
"""The surround: the cervix box widened by this much of its size on each side, less the box itself."""
FOCUS_V2 = (
    *FOCUS_V1,
    "frame_0.5_1",
    "frame_1_2",
    "frame_2_4",
    "surround_0.5_1",
    "surround_1_2",
    "surround_2_4",
    "surround_ratio_0.5_1",
    "surround_ratio_1_2",
    "surround_fraction",
)
"""``focus-v1``, then what lies around the cervix (``_around``): motion and whole-frame defocus blur the speculum
and the walls, whose edges carry more of the blur than smooth tissue, while blur confined to the cervix leaves
them sharp."""


def _frame(image: np.ndarray) -> np.ndarray:
    """The photo at a long side of at most ``FRAME_SIDE``, exact halvings first (OpenCV's fast integer path)."""
    h, w = image.shape[:2]
    scale = FRAME_SIDE / max(h, w)
    return shrink(image, max(1, round(w * scale)), max(1, round(h * scale)), halve_from=2) if scale < 1.0 else image


def _around(image: np.ndarray, box: Box | None) -> list[float]:
    """On the whole frame at ``FRAME_SIDE`` (glare, marks and near-black left out): the log energy of its bands
    0.5-1, 1-2 and 2-4 px; the same over the surround (the cervix box widened by ``SURROUND_MARGIN``, less the
    box), the per-block ratios of its two finest bands over the 2-4 px band, and the share of the frame that
    surround covers."""
    frame = _frame(image)
    h, w = frame.shape[:2]
    if min(h, w) < 4 * _MIN_SIDE:
        return [-10.0] * 8 + [0.0]
    glare, marks = glare_and_marks_apart(frame)
    excluded = cv2.dilate((glare | marks).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    valid = ~excluded & (channel_max(frame) >= 30)
    grey = frame[..., 1].astype(np.float32)
    whole = _band_measures(grey, valid, 3) if np.count_nonzero(valid) >= 100 else [-10.0] * 3
    x0, y0, x1, y1 = finite(box) or (0.2, 0.2, 0.8, 0.8)
    mx, my = (x1 - x0) * SURROUND_MARGIN, (y1 - y0) * SURROUND_MARGIN
    surround = np.zeros_like(valid)
    surround[
        max(0, round((y0 - my) * h)) : round((y1 + my) * h), max(0, round((x0 - mx) * w)) : round((x1 + mx) * w)
    ] = True
    surround[max(0, round(y0 * h)) : round(y1 * h), max(0, round(x0 * w)) : round(x1 * w)] = False
    surround &= valid
    fraction = np.count_nonzero(surround) / surround.size
    if np.count_nonzero(surround) < 100:
        return [*whole, *[-10.0] * 5, fraction]
    return [*whole, *_band_measures(grey, surround, 3, ratios_over=2, ratios=2), fraction]


def focus_v2(image: np.ndarray, box: Box | None) -> npt.NDArray[np.float32]:
    """The ``focus-v2`` features (``FOCUS_V2``): ``focus-v1``, then those of what lies around the cervix."""
    return np.concatenate([focus_v1(image, box), np.asarray(_around(image, box), np.float32)])


FEATURE_SETS = {"focus-v1": (FOCUS_V1, focus_v1), "focus-v2": (FOCUS_V2, focus_v2)}
"""Classical feature sets by name: (feature names, function of a BGR photo and its normalised cervix box)."""


def features(name: str, image: np.ndarray, box: Box | None) -> npt.NDArray[np.float32]:
    """The feature set ``name`` of the cervix ``box`` of a BGR photo, ``[len(names)]`` float32."""
    return FEATURE_SETS[name][1](image, box)


def blur_type(image: np.ndarray, box: Box | None) -> BlurType:
    """``motion`` or ``defocus`` for the cervix ``box`` (normalised; None: the central region) of a BGR image."""
    view = box_view(image, box, TYPE_WIDTH)
    return "motion" if directional_ratio(view) < MOTION_RATIO else "defocus"
