"""The model-free ("classical") backend: locate the cervix by colour and shape, judge focus on it.

It is the fallback when no model engine can run.  All tunables live in ``ClassicalConfig`` (the
``classical:`` section of the config).

Locating (``ClassicalDetector``), on a copy reduced to ``detector_size`` pixels long side:

1. Dark pixels (vignette, speculum shadow, canal; below ``dark_relative`` of the 95th-percentile Lab
   lightness) and glare (every channel >= ``glare_level``) are set aside.
2. The tissue colour is learnt from the photo itself, so no examination stage is assumed: the median Lab
   colour of the usable pixels of a central ellipse.  Pixels within an adaptive chroma distance of it are
   tissue (pink after saline, acetowhite, teal under the green filter), and so are pixels of warm hue (pink,
   red, orange, brown), so a two-toned Lugol's-stained cervix stays one region; but only if they are not
   much darker than the reference, because the cervix faces the light and the vaginal wall and fornices
   around it are darker.  Glare on the tissue is filled in by a morphological closing; an opening cuts thin
   bridges to the wall.
3. The connected region with the largest centre-weighted area is the cervix; its box is the 1st-99th
   percentile extent of the region.  ``score`` is the product of soft ramps on the region's area and
   solidity, the photo's colourfulness, the reference colour's chroma (grey photos have neither) and the
   region's smoothness (tissue is smooth at this scale, noise and coarse textures are not);
   ``found`` is ``score >= min_found_score``.  Colour and shape cannot tell a cervix from the vaginal wall
   or from other warm-coloured smooth objects (skin, a red-brown mug): ``found`` means "a tissue-like
   region is in view".

Focus (``ClassicalFocus``), judged at a fixed physical scale:

- The cervix box (or, with no box, the central ``central_fraction`` of the frame) is resampled so that its
  geometric-mean side is ``focus_scale_px`` pixels: a ~30 mm cervix then has ~0.07 mm pixels, whether it
  came from an 800x600 atlas photo or a 12-megapixel phone photo, and whether the view is close or wide.
- Measure: on the green channel (it carries vessel and surface contrast under every stage), the ratio of
  the local energy of a detail band (difference of Gaussians, sigma s..2s with s = ``detail_sigma``) to that
  of a structure band (3s..6s), median over the pixels whose structure energy is above a noise floor.  Blur
  takes the detail band first, whatever the scene's contrast or exposure, so the ratio needs no per-scene
  normalisation.  The detail band starts at 1 px, not at the finest pixels, so sensor noise, JPEG blocking
  and sharpening halos do not make a blurred photo look sharp; the median makes the few crisp edges that
  are left (instrument edges, blood drops) irrelevant.  The ratio is taken with 2-D bands and with bands
  along x and along y; the measure is the geometric mean of the 2-D ratio and the lower 1-D one, so motion
  blur, which leaves detail across its direction, is caught too.
- Glare and drawn marks (small connected patches of saturated non-tissue hue: arrows, outlines, text,
  timestamps) stay crisp on blurred photos: they and a rim of blended pixels around them are replaced by
  a local (normalised-convolution) average of the tissue around them before filtering, and a further rim
  is left out of the statistic.
- ``sharp_probability = 1 / (1 + exp(-(ln(measure) - ln(focus_threshold)) / focus_softness))``, so 0.5
  is the operating threshold.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from gateway.assessment import Box, CervixFinding, FocusFinding
from gateway.focus_measures import channel_max, channel_min, glare_and_marks, resize

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

_MIN_SIDE = 8
"""Images (or regions) with a shorter side than this are too small to judge."""
_NOT_FOUND = CervixFinding(found=False, box=None, score=0.0)


class ClassicalConfig(BaseModel):
    """Thresholds of the classical backend (the ``classical:`` section of the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- shared
    glare_level: int = Field(
        default=215, ge=1, le=255, description="A pixel whose every BGR channel is at least this is glare."
    )
    # --- locating
    detector_size: int = Field(
        default=160, ge=32, le=1024, description="Long side (px) of the reduced copy the cervix is located on."
    )
    dark_relative: float = Field(
        default=0.35, ge=0, le=1, description="Dark: Lab lightness below this fraction of the 95th percentile."
    )
    dark_floor: float = Field(default=12.0, ge=0, le=100, description="Dark: Lab lightness (0-100) below this, always.")
    reference_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Diameter (fraction of each side) of the central ellipse the tissue colour is taken from.",
    )
    colour_tolerance_spread: float = Field(
        default=2.5,
        gt=0,
        description="Tissue: chroma distance to the reference below this many times its median spread...",
    )
    colour_tolerance_min: float = Field(default=8.0, ge=0, description="...but at least this (Lab units)...")
    colour_tolerance_max: float = Field(default=25.0, ge=0, description="...and at most this (Lab units).")
    lightness_tolerance_spread: float = Field(
        default=2.0,
        gt=0,
        description="Tissue: Lab lightness at most this many median deviations below the reference's...",
    )
    lightness_tolerance_min: float = Field(
        default=8.0, ge=0, description="...but at least this far below it is allowed..."
    )
    lightness_tolerance_max: float = Field(
        default=15.0, ge=0, description="...and at most this far (darker: wall, fornix)."
    )
    warm_hue_min: float = Field(
        default=-30.0, ge=-180, le=180, description="Warm tissue hue range, Lab hue angle (deg): from."
    )
    warm_hue_max: float = Field(
        default=80.0, ge=-180, le=180, description="Warm tissue hue range, Lab hue angle (deg): to."
    )
    warm_min_chroma: float = Field(default=12.0, ge=0, description="Warm tissue: Lab chroma at least this.")
    min_area_fraction: float = Field(
        default=0.02, gt=0, le=1, description="Area (fraction of the frame) a cervix region must reach to count fully."
    )
    min_solidity: float = Field(
        default=0.5, gt=0, le=1, description="Solidity (area / convex hull) a cervix region must reach to count fully."
    )
    min_colourfulness: float = Field(
        default=8.0,
        gt=0,
        description="90th-percentile Lab chroma of the photo needed to count fully (grey photos: ~0).",
    )
    min_reference_chroma: float = Field(
        default=1.5,
        gt=0,
        description="Lab chroma of the reference tissue colour needed to count fully (grey or noise: ~0).",
    )
    max_roughness: float = Field(
        default=3.0,
        gt=0,
        description="Region median pixel-scale Lab lightness deviation (reduced copy) up to which it counts fully; "
        "rougher is texture or noise, not tissue (none at 1.5 times this).",
    )
    min_found_score: float = Field(default=0.5, ge=0, le=1, description="found = score >= this.")
    # --- focus
    focus_scale_px: int = Field(
        default=448,
        ge=64,
        le=2048,
        description="The judged region is resampled to this geometric-mean side (px) before measuring.",
    )
    central_fraction: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="Side (fraction of the frame) of the central region judged when no cervix was found.",
    )
    detail_sigma: float = Field(
        default=1.0,
        gt=0,
        le=8,
        description="Detail band: difference of Gaussians sigma s..2s; structure band 3s..6s (px at focus scale).",
    )
    structure_floor: float = Field(
        default=2.0, ge=0, description="Pixels count when the RMS of their structure band exceeds this (8-bit levels)."
    )
    mark_saturation: int = Field(
        default=110, ge=0, le=255, description="Drawn marks: HSV saturation at least this, hue yellow to violet..."
    )
    mark_max_area: float = Field(
        default=0.01, gt=0, le=1, description="...in connected patches smaller than this fraction of the judged region."
    )
    focus_threshold: float = Field(
        default=0.15,
        gt=0,
        description="Detail/structure energy ratio at which sharp_probability is 0.5: the median ratio of sharp "
        "dev photos blurred by a Gaussian of sigma 1.25 px at 800 px wide (1 px at the 640 px view they were "
        "labelled at).",
    )
    focus_softness: float = Field(
        default=0.25, gt=0, description="Width of the logistic in ln(measure): larger gives a softer probability."
    )


def _ramp(value: float, lo: float, hi: float) -> float:
    """0 at ``lo`` or below, 1 at ``hi`` or above, linear between."""
    if hi <= lo:
        return 1.0 if value >= hi else 0.0
    return min(max((value - lo) / (hi - lo), 0.0), 1.0)


def _blur(image: F32, sigma: float, axis: int | None) -> F32:
    """Gaussian blur in 2-D (``axis`` None) or along x (0) or y (1) only."""
    if axis is None:
        return cv2.GaussianBlur(image, (0, 0), sigma).astype(np.float32, copy=False)
    kernel = cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma)
    one = np.ones((1, 1), np.float64)
    kx, ky = (kernel, one) if axis == 0 else (one, kernel)
    return cv2.sepFilter2D(image, -1, kx, ky).astype(np.float32, copy=False)


class ClassicalDetector:
    """Locates the cervix by colour and shape (see the module docstring)."""

    def __init__(self, config: ClassicalConfig) -> None:
        self.config = config
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def locate(self, image: np.ndarray) -> CervixFinding:
        """Find the cervix in an upright HxWx3 uint8 BGR image."""
        cfg = self.config
        h, w = image.shape[:2]
        if min(h, w) < _MIN_SIDE:
            return _NOT_FOUND
        scale = min(1.0, cfg.detector_size / max(h, w))
        small = resize(image, max(1, round(w * scale)), max(1, round(h * scale)))
        sh, sw = small.shape[:2]
        lab = cv2.cvtColor(small.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2LAB)
        lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]

        glare = channel_min(small) >= cfg.glare_level
        dark_level = max(cfg.dark_floor, cfg.dark_relative * float(np.percentile(lightness, 95)))
        usable = ~glare & (lightness >= dark_level)
        yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
        r2 = ((xx + 0.5) / sw - 0.5) ** 2 + ((yy + 0.5) / sh - 0.5) ** 2
        central = usable & (r2 <= (cfg.reference_fraction / 2) ** 2)
        if np.count_nonzero(central) < 10:
            return _NOT_FOUND

        ref_a, ref_b = float(np.median(a[central])), float(np.median(b[central]))
        ref_l = float(np.median(lightness[central]))
        distance = np.hypot(a - ref_a, b - ref_b)
        tol_c = cfg.colour_tolerance_spread * float(np.median(distance[central]))
        tol_c = min(max(tol_c, cfg.colour_tolerance_min), cfg.colour_tolerance_max)
        tol_l = cfg.lightness_tolerance_spread * float(np.median(np.abs(lightness[central] - ref_l)))
        tol_l = min(max(tol_l, cfg.lightness_tolerance_min), cfg.lightness_tolerance_max)
        chroma = np.hypot(a, b)
        hue = np.degrees(np.arctan2(b, a))
        warm = (chroma >= cfg.warm_min_chroma) & (hue >= cfg.warm_hue_min) & (hue <= cfg.warm_hue_max)
        lit = usable & (lightness >= ref_l - tol_l)
        tissue = (lit & ((distance <= tol_c) | warm)) | glare

        region = cv2.morphologyEx(tissue.astype(np.uint8), cv2.MORPH_OPEN, self._kernel)
        region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, self._kernel)
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(region, connectivity=4)
        if count <= 1:
            return _NOT_FOUND
        offset = np.hypot(centroids[1:, 0] / sw * 2 - 1, centroids[1:, 1] / sh * 2 - 1)
        best = int(np.argmax(stats[1:, cv2.CC_STAT_AREA] * np.exp(-(offset**2)))) + 1
        component = labels == best
        ys, xs = np.nonzero(component)
        x0, x1 = np.percentile(xs, [1, 99])
        y0, y1 = np.percentile(ys, [1, 99])
        box: Box = (float(x0) / sw, float(y0) / sh, float(x1 + 1) / sw, float(y1 + 1) / sh)

        colourfulness = float(np.percentile(chroma[usable], 90))
        score = self._score(component, lightness, colourfulness, math.hypot(ref_a, ref_b))
        return CervixFinding(found=score >= cfg.min_found_score, box=box, score=score)

    def _score(self, component: Mask, lightness: F32, colourfulness: float, reference_chroma: float) -> float:
        """How much the chosen region looks like a cervix: a product of soft ramps (0..1)."""
        cfg = self.config
        area = float(np.count_nonzero(component))
        contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
        solidity = min(1.0, area / max(hull, 1.0))
        roughness = float(np.median(np.abs(lightness - cv2.GaussianBlur(lightness, (0, 0), 1.0))[component]))
        return (
            _ramp(area / component.size, cfg.min_area_fraction / 2, cfg.min_area_fraction)
            * _ramp(solidity, cfg.min_solidity / 2, cfg.min_solidity)
            * _ramp(colourfulness, cfg.min_colourfulness / 2, cfg.min_colourfulness)
            * _ramp(reference_chroma, cfg.min_reference_chroma / 2, cfg.min_reference_chroma)
            * _ramp(-roughness, -1.5 * cfg.max_roughness, -cfg.max_roughness)
        )


class ClassicalFocus:
    """Judges focus inside the cervix box at a fixed physical scale (see the module docstring)."""

    def __init__(self, config: ClassicalConfig) -> None:
        self.config = config
        self._dilate = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def judge(self, image: np.ndarray, box: Box | None) -> FocusFinding:
        """Focus of the cervix ``box`` (normalised; None: the central region) of an HxWx3 uint8 BGR image."""
        measure = self.measure(image, box)
        cfg = self.config
        if measure <= 0.0:
            return FocusFinding(sharp_probability=0.0, measure=0.0)
        z = (math.log(measure) - math.log(cfg.focus_threshold)) / cfg.focus_softness
        return FocusFinding(sharp_probability=1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0))), measure=measure)

    def measure(self, image: np.ndarray, box: Box | None) -> float:
        """The detail/structure energy ratio of the region (0 when there is nothing to measure)."""
        cfg = self.config
        crop = self._crop(image, box)
        if crop is None:
            return 0.0
        scale = cfg.focus_scale_px / math.sqrt(crop.shape[0] * crop.shape[1])
        view = resize(crop, max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        if min(view.shape[:2]) < _MIN_SIDE:
            return 0.0

        green = view[..., 1].astype(np.float32)
        # Glare and marks, with the rim of blended pixels around them, are filled with the surrounding tissue.
        spots = glare_and_marks(view, cfg.glare_level, cfg.mark_saturation, cfg.mark_max_area)
        excluded = cv2.dilate(spots.astype(np.uint8), self._dilate) > 0
        keep = (~excluded).astype(np.float32)
        s_fill = 4.0 * cfg.detail_sigma
        filled = cv2.GaussianBlur(green * keep, (0, 0), s_fill) / np.maximum(
            cv2.GaussianBlur(keep, (0, 0), s_fill), np.float32(1e-3)
        )
        green = np.where(excluded, filled, green)
        # The statistic leaves out a further rim (the fill's edge) and near-black pixels (noise only).
        valid = (cv2.dilate(excluded.astype(np.uint8), self._dilate) == 0) & (channel_max(view) >= 30)

        isotropic = self._band_ratio(green, valid, None)
        along = min(self._band_ratio(green, valid, axis) for axis in (0, 1))
        return math.sqrt(isotropic * along)

    def _band_ratio(self, green: F32, valid: Mask, axis: int | None) -> float:
        """Median detail/structure energy ratio, bands taken in 2-D (None) or along x (0) or y (1)."""
        s = self.config.detail_sigma
        b1, b2, b3, b6 = (_blur(green, k * s, axis) for k in (1, 2, 3, 6))
        detail = cv2.GaussianBlur((b1 - b2) ** 2, (0, 0), 4 * s)
        structure = cv2.GaussianBlur((b3 - b6) ** 2, (0, 0), 4 * s)
        counted = valid & (structure > self.config.structure_floor**2 / (1 if axis is None else 2))
        if np.count_nonzero(counted) < 50:
            return 0.0
        return float(np.median(detail[counted] / structure[counted]))

    def _crop(self, image: np.ndarray, box: Box | None) -> np.ndarray | None:
        """The judged region in pixels, or None when it is too small to judge."""
        h, w = image.shape[:2]
        if box is None or not all(math.isfinite(v) for v in box):
            m = (1.0 - self.config.central_fraction) / 2
            box = (m, m, 1.0 - m, 1.0 - m)
        x0, x1 = (min(max(round(v * w), 0), w) for v in (box[0], box[2]))
        y0, y1 = (min(max(round(v * h), 0), h) for v in (box[1], box[3]))
        if x1 - x0 < _MIN_SIDE or y1 - y0 < _MIN_SIDE:
            return None
        return image[y0:y1, x0:x1]
