"""Decoded outputs -> findings: the cervix box, and a sharp probability calibrated so 0.5 is the threshold.

* detector: the highest-scoring ``cervix`` detection; found when its score reaches the model's threshold;
* focus RetinaNet: the highest-scoring box over all anchors and both classes decides (Guo et al.): its score
  ``s`` gives a raw sharp probability ``s`` if the class is ``sharp``, else ``1 - s``;
* focus classifier: softmax over ``[N, 2]`` logits (the ``sharp`` column), or the sigmoid of ``[N, 1]``; its
  optional ``[N, 2]`` blur-type logits ``[defocus, motion]``: softmax, ``motion`` from the model's motion threshold.

The raw probability ``p`` is then mapped through the model's operating threshold ``t`` (piecewise linear:
``0 -> 0``, ``t -> 0.5``, ``1 -> 1``), so the policy's 0.5 means the model's operating point. A model that gives
its recapture threshold ``r`` also maps ``r -> RECAPTURE_POINT`` (0.4, where the default policy starts to
recapture), so the borderline band is the one chosen with the model.
"""

from __future__ import annotations

import numpy as np

from gateway.assessment import BlurType, CervixFinding, FocusFinding
from gateway.models.preprocess import Geometry
from gateway.models.retinanet import Detections, sigmoid

RECAPTURE_POINT = 0.4
"""Where the default policy starts to recapture: ``sharp_threshold`` 0.5 minus ``borderline_band`` 0.1."""


def calibrate(probability: float, threshold: float, recapture: float | None = None) -> float:
    """Map a raw probability so that ``threshold`` becomes 0.5 and ``recapture`` (if given, below ``threshold``)
    becomes ``RECAPTURE_POINT`` (monotonic, piecewise linear, 0..1)."""
    p = min(1.0, max(0.0, float(probability)))
    if p >= threshold:
        return 0.5 + 0.5 * (p - threshold) / (1.0 - threshold)
    if recapture is None:
        return 0.5 * p / threshold
    if p < recapture:
        return RECAPTURE_POINT * p / recapture
    return RECAPTURE_POINT + (0.5 - RECAPTURE_POINT) * (p - recapture) / (threshold - recapture)


def cervix_finding(
    detections: Detections, geometry: Geometry, labels: tuple[str, ...], threshold: float
) -> CervixFinding:
    """The best cervix detection as a finding (box normalised to the photo)."""
    cervix = labels.index("cervix")
    mine = np.flatnonzero(detections.labels == cervix)
    if mine.size == 0:
        return CervixFinding(found=False, box=None, score=0.0)
    best = int(mine[np.argmax(detections.scores[mine])])
    score = float(detections.scores[best])
    x0, y0, x1, y1 = (float(v) for v in geometry.to_source(detections.boxes[best : best + 1])[0])
    if score < threshold or x1 <= x0 or y1 <= y0:
        return CervixFinding(found=False, box=None, score=score)
    return CervixFinding(found=True, box=(x0, y0, x1, y1), score=score)


def retinanet_focus(
    cls_logits: np.ndarray, labels: tuple[str, ...], threshold: float, recapture: float | None = None
) -> FocusFinding:
    """``[A, 2]`` focus logits -> the finding of the highest-scoring box (``measure``: the raw probability)."""
    if cls_logits.size == 0:
        raise ValueError("the focus model gave no anchors")
    scores = sigmoid(cls_logits)
    anchor, label = np.unravel_index(int(np.argmax(scores)), scores.shape)
    top = float(scores[anchor, label])
    raw = top if labels[int(label)] == "sharp" else 1.0 - top
    return FocusFinding(sharp_probability=calibrate(raw, threshold, recapture), measure=raw)


def classifier_focus(
    logits: np.ndarray, labels: tuple[str, ...], threshold: float, recapture: float | None = None
) -> FocusFinding:
    """One image's ``[2]`` (softmax) or ``[1]`` (sigmoid) logits -> the focus finding."""
    values = np.asarray(logits, dtype=np.float64).ravel()
    raw = float(sigmoid(values)[0]) if values.size == 1 else _softmax(values, labels.index("sharp"))
    return FocusFinding(sharp_probability=calibrate(raw, threshold, recapture), measure=raw)


def _softmax(logits: np.ndarray, column: int) -> float:
    """The softmax probability of ``column`` of one image's logits."""
    values = np.asarray(logits, dtype=np.float64).ravel()
    shifted = np.exp(values - values.max())
    return float(shifted[column] / shifted.sum())


def motion_probability(blur_type_logits: np.ndarray) -> float:
    """One image's ``[2]`` blur-type logits ``[defocus, motion]`` -> the softmax probability of motion."""
    return _softmax(blur_type_logits, 1)


def blur_type_of(motion: float, threshold: float) -> BlurType:
    """``motion`` from ``threshold`` (the manifest's ``motion_threshold``) up, else ``defocus``."""
    return "motion" if motion >= threshold else "defocus"
