"""What the pipeline found in one photo: the values passed from pipeline to policy.

Plain frozen dataclasses, free of MQTT and of any backend, so every stage can be tested alone.
Boxes are normalised ``(x0, y0, x1, y1)`` in 0..1 of the upright (EXIF-oriented) image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Box = tuple[float, float, float, float]
BlurType = Literal["motion", "defocus"]
"""What blurred a photo: the camera moved, or it focused elsewhere (blur confined to the cervix is ``defocus``)."""


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class CervixFinding:
    found: bool
    box: Box | None
    score: float


@dataclass(frozen=True)
class FocusFinding:
    sharp_probability: float
    """0..1; calibrated so that 0.5 is the backend's operating threshold."""
    measure: float
    """The backend's raw focus measure (for logs and tuning), e.g. a normalised Laplacian energy."""
    blur_type: BlurType | None = None
    """What blurred the photo if it is blurred; None until measured (the pipeline measures it when a backend
    does not)."""


@dataclass(frozen=True)
class ExposureFinding:
    mean_luma: float
    """Mean luma (0..255) over the judged region."""
    dark_fraction: float
    """Fraction of pixels of the judged region below the dark level."""
    clipped_fraction: float
    """Fraction of pixels of the judged region at or above the clipping level."""
    too_dark: bool
    overexposed: bool


@dataclass(frozen=True)
class Assessment:
    cervix: CervixFinding
    focus: FocusFinding
    exposure: ExposureFinding
    timings_ms: dict[str, float] = field(default_factory=dict)
