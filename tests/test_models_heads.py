"""Findings from decoded outputs, and the calibration that makes 0.5 the operating threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.models.heads import calibrate, cervix_finding, classifier_focus, retinanet_focus
from gateway.models.preprocess import Geometry
from gateway.models.retinanet import Detections


@pytest.mark.parametrize(
    ("p", "t", "expected"),
    [(0.0, 0.3, 0.0), (0.3, 0.3, 0.5), (1.0, 0.3, 1.0), (0.15, 0.3, 0.25), (0.65, 0.3, 0.75), (0.42, 0.5, 0.42)],
)
def test_calibrate_maps_the_threshold_to_one_half(p: float, t: float, expected: float) -> None:
    assert calibrate(p, t) == pytest.approx(expected)


def test_calibrate_is_monotonic_and_bounded() -> None:
    values = [calibrate(p, 0.8) for p in np.linspace(-0.5, 1.5, 41)]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    banded = [calibrate(p, 0.8, 0.3) for p in np.linspace(-0.5, 1.5, 41)]
    assert banded == sorted(banded) and banded[0] == 0.0 and banded[-1] == 1.0


@pytest.mark.parametrize(
    ("p", "expected"), [(0.0, 0.0), (0.15, 0.2), (0.3, 0.4), (0.55, 0.45), (0.8, 0.5), (0.9, 0.75), (1.0, 1.0)]
)
def test_a_recapture_threshold_maps_to_where_the_default_policy_recaptures(p: float, expected: float) -> None:
    assert calibrate(p, 0.8, recapture=0.3) == pytest.approx(expected)


GEOMETRY = Geometry(source_w=64, source_h=64, scale_x=0.5, scale_y=0.5)  # a 64x64 photo in a 32x32 input


def dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores), np.array(labels))


def test_the_best_cervix_box_normalised_to_the_photo() -> None:
    found = cervix_finding(
        dets([[8, 8, 32, 24], [0, 0, 16, 16]], [0.88, 0.95], [0, 1]), GEOMETRY, ("cervix", "os"), 0.5
    )
    assert found.found and found.score == pytest.approx(0.88)
    assert found.box == pytest.approx((0.25, 0.25, 1.0, 0.75))


def test_below_the_threshold_or_nothing_is_not_found() -> None:
    weak = cervix_finding(dets([[8, 8, 32, 24]], [0.4], [0]), GEOMETRY, ("cervix",), 0.5)
    assert not weak.found and weak.box is None and weak.score == pytest.approx(0.4)
    nothing = cervix_finding(dets([], [], []), GEOMETRY, ("cervix",), 0.5)
    assert (nothing.found, nothing.box, nothing.score) == (False, None, 0.0)


def test_retinanet_focus_follows_the_highest_scoring_box() -> None:
    # anchor 1, class not_sharp has the top score sigmoid(3) = 0.9526 -> raw sharp 0.0474
    logits = np.array([[1.0, -2.0], [0.5, 3.0], [2.0, -1.0]])
    finding = retinanet_focus(logits, ("sharp", "not_sharp"), 0.5)
    assert finding.measure == pytest.approx(1 - 1 / (1 + math.exp(-3.0)))
    assert finding.sharp_probability == pytest.approx(finding.measure)
    sharp = retinanet_focus(np.array([[4.0, 0.0]]), ("sharp", "not_sharp"), 0.9)
    raw = 1 / (1 + math.exp(-4.0))  # 0.982 -> 0.5 + 0.5 * (0.982 - 0.9) / 0.1 = 0.91
    assert sharp.measure == pytest.approx(raw)
    assert sharp.sharp_probability == pytest.approx(0.5 + 0.5 * (raw - 0.9) / 0.1)


def test_classifier_focus_softmax_and_sigmoid() -> None:
    two = classifier_focus(np.array([0.0, 1.0]), ("not_sharp", "sharp"), 0.6)
    raw = math.e / (1 + math.e)  # 0.7311
    assert two.measure == pytest.approx(raw)
    assert two.sharp_probability == pytest.approx(0.5 + 0.5 * (raw - 0.6) / 0.4)
    swapped = classifier_focus(np.array([0.0, 1.0]), ("sharp", "not_sharp"), 0.5)
    assert swapped.measure == pytest.approx(1 - raw)
    one = classifier_focus(np.array([-1.0]), ("sharp",), 0.5)
    assert one.measure == pytest.approx(1 / (1 + math.e))
