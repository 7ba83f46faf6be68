"""Exposure checks shared by all backends: is the judged region too dark or overexposed?

Works on BT.601 luma of the judged region (the cervix box, else a central region), subsampled to at most
``max_pixels`` pixels so the cost is the same for every image size.  A region is too dark when its mean luma
is low or when much of it lies below the dark level; overexposed when its mean luma is high or when more of
it is clipped than the specular glints of wet tissue (typically 1-4 % of the cervix) explain.  Clipping is
judged on luma, not on any channel: saturated red channels are normal on well exposed tissue.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gateway.assessment import Box, ExposureFinding


class ExposureConfig(BaseModel):
    """Exposure thresholds (the ``exposure:`` section of the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dark_level: int = Field(default=40, ge=0, le=255, description="Luma below which a pixel counts as dark.")
    clip_level: int = Field(default=250, ge=1, le=255, description="Luma at or above which a pixel counts as clipped.")
    min_mean_luma: float = Field(
        default=60.0, ge=0, le=255, description="Too dark when the region's mean luma is below."
    )
    max_dark_fraction: float = Field(
        default=0.5, ge=0, le=1, description="Too dark when more than this fraction of the region is dark."
    )
    max_mean_luma: float = Field(
        default=215.0, ge=0, le=255, description="Overexposed when the region's mean luma is above."
    )
    max_clipped_fraction: float = Field(
        default=0.10, ge=0, le=1, description="Overexposed when more than this fraction of the region is clipped."
    )
    central_fraction: float = Field(
        default=0.6, gt=0, le=1, description="Side of the central region judged when no cervix box is given."
    )
    max_pixels: int = Field(
        default=65536, ge=1024, description="The region is subsampled on a regular grid to at most this many pixels."
    )


def _region(image: np.ndarray, box: Box | None, central_fraction: float) -> np.ndarray:
    """The judged region of ``image``: the box (clamped, at least one pixel) or the central region."""
    h, w = image.shape[:2]
    if box is None or not all(math.isfinite(v) for v in box):
        m = (1.0 - central_fraction) / 2.0
        box = (m, m, 1.0 - m, 1.0 - m)
    x0 = min(max(math.floor(box[0] * w), 0), w - 1)
    y0 = min(max(math.floor(box[1] * h), 0), h - 1)
    x1 = min(max(math.ceil(box[2] * w), x0 + 1), w)
    y1 = min(max(math.ceil(box[3] * h), y0 + 1), h)
    return image[y0:y1, x0:x1]


def check_exposure(image: np.ndarray, box: Box | None, config: ExposureConfig) -> ExposureFinding:
    """Judge the exposure of the cervix ``box`` (normalised) of a BGR uint8 image, or of its centre."""
    region = _region(image, box, config.central_fraction)
    step = max(1, math.ceil(math.sqrt(region.shape[0] * region.shape[1] / config.max_pixels)))
    luma = cv2.cvtColor(np.ascontiguousarray(region[::step, ::step]), cv2.COLOR_BGR2GRAY)
    mean_luma = float(luma.mean())
    dark_fraction = float(np.count_nonzero(luma < config.dark_level)) / luma.size
    clipped_fraction = float(np.count_nonzero(luma >= config.clip_level)) / luma.size
    return ExposureFinding(
        mean_luma=mean_luma,
        dark_fraction=dark_fraction,
        clipped_fraction=clipped_fraction,
        too_dark=mean_luma < config.min_mean_luma or dark_fraction > config.max_dark_fraction,
        overexposed=mean_luma > config.max_mean_luma or clipped_fraction > config.max_clipped_fraction,
    )
