"""Anchors, box decoding, NMS and RetinaNet post-processing against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.models.manifest import AnchorSpec, DecodeSpec
from gateway.models.retinanet import (
    base_anchors,
    batched_nms,
    box_iou,
    decode_boxes,
    generate_anchors,
    nms,
    postprocess,
    sigmoid,
)
from tests.onnx_models import DETECTOR_BOX, DETECTOR_CLS, DETECTOR_REG, DETECTOR_SCORE


def test_base_anchors_match_torchvision_for_size_32() -> None:
    # ratio 0.5: w = 32 * sqrt(2) = 45.25, h = 32 / sqrt(2) = 22.63, halved and rounded -> 23, 11
    got = base_anchors(32, (0.5, 1.0, 2.0), (1.0,))
    assert got.tolist() == [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]


def test_base_anchors_are_ratio_major_then_scale() -> None:
    got = base_anchors(16, (1.0, 4.0), (1.0, 2.0))
    # ratio 1: sizes 16, 32; ratio 4 (h = 2w): 16 -> w 8, h 32; 32 -> w 16, h 64
    assert got.tolist() == [[-8, -8, 8, 8], [-16, -16, 16, 16], [-4, -16, 4, 16], [-8, -32, 8, 32]]


def test_generate_anchors_orders_levels_then_rows_then_columns() -> None:
    spec = AnchorSpec(strides=(16, 32), sizes=(16, 32), aspect_ratios=(1.0,), scales=(1.0,))
    anchors = generate_anchors(spec, 32, 32)
    assert anchors.level_counts == (4, 1)
    assert anchors.boxes.tolist() == [
        [-8, -8, 8, 8],
        [8, -8, 24, 8],
        [-8, 8, 8, 24],
        [8, 8, 24, 24],
        [-16, -16, 16, 16],
    ]
    assert spec.count(32, 32) == 5
    assert not anchors.boxes.flags.writeable


def test_anchor_count_of_a_typical_retinanet() -> None:
    spec = AnchorSpec(strides=(8, 16, 32, 64, 128), sizes=(32, 64, 128, 256, 512))
    # 640x640: 80^2 + 40^2 + 20^2 + 10^2 + 5^2 locations, 9 anchors each
    assert spec.count(640, 640) == (6400 + 1600 + 400 + 100 + 25) * 9


def test_decode_zero_deltas_give_the_anchor() -> None:
    anchors = np.array([[10.0, 20.0, 30.0, 60.0]])
    assert decode_boxes(np.zeros((1, 4)), anchors).tolist() == [[10.0, 20.0, 30.0, 60.0]]


def test_decode_hand_computed() -> None:
    # anchor centre (20, 40), 20 x 40; dx 0.5 -> centre x 30; dy -0.25 -> centre y 30; dw log 2 -> w 40; dh 0
    anchors = np.array([[10.0, 20.0, 30.0, 60.0]])
    deltas = np.array([[0.5, -0.25, math.log(2.0), 0.0]])
    np.testing.assert_allclose(decode_boxes(deltas, anchors), [[10.0, 10.0, 50.0, 50.0]])


def test_decode_weights_divide_the_deltas() -> None:
    anchors = np.array([[0.0, 0.0, 10.0, 10.0]])
    deltas = np.array([[10.0, 0.0, 5 * math.log(2.0), 0.0]])
    # weights (10, 10, 5, 5) as torchvision's Faster R-CNN: dx 1 -> centre 15; dw log 2 -> width 20
    np.testing.assert_allclose(decode_boxes(deltas, anchors, (10, 10, 5, 5)), [[5.0, 0.0, 25.0, 10.0]])


def test_decode_clamps_huge_sizes() -> None:
    anchors = np.array([[0.0, 0.0, 16.0, 16.0]])
    box = decode_boxes(np.array([[0.0, 0.0, 100.0, 100.0]]), anchors)[0]
    assert box[2] - box[0] == pytest.approx(1000.0)  # exp(log(1000/16)) * 16


def test_iou_hand_computed() -> None:
    box = np.array([0.0, 0.0, 10.0, 10.0])
    boxes = np.array([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0], [3, 3, 3, 3]])
    # half overlap: 50 / (100 + 100 - 50) = 1/3; disjoint 0; identical 1; a zero-area box 0
    np.testing.assert_allclose(box_iou(box, boxes), [1 / 3, 0.0, 1.0, 0.0])


def test_nms_hand_computed() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 3 (best) overlaps 0 by 90/100 and 1 by 72/(90+100-72)=0.61; box 2 is alone
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    # at 0.65, box 1 (IoU with 3 = 0.61) survives, box 0 (0.9) does not
    assert nms(boxes, scores, 0.65).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 1.0).tolist() == [3, 0, 1, 2]


def test_nms_ties_keep_the_lower_index_and_empty_input_works() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    assert nms(boxes, np.array([0.5, 0.5]), 0.5).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_batched_nms_only_suppresses_within_a_label() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5).tolist() == [0, 1]


def test_sigmoid_is_stable() -> None:
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


SPEC = AnchorSpec(strides=(16,), sizes=(16,), aspect_ratios=(1.0,), scales=(1.0,))


def test_postprocess_hand_computed_detection() -> None:
    anchors = generate_anchors(SPEC, 32, 32)
    dets = postprocess(DETECTOR_CLS, DETECTOR_REG, anchors, SPEC, DecodeSpec(), (32, 32))
    # anchors 0,1 score sigmoid(-5) = 0.0067 < 0.05 and drop; anchor 2 (0.018) too; only anchor 3 is left
    assert len(dets) == 1
    np.testing.assert_allclose(dets.boxes[0], DETECTOR_BOX)
    assert dets.scores[0] == pytest.approx(DETECTOR_SCORE)
    assert dets.labels.tolist() == [0]


def test_postprocess_clips_suppresses_and_limits() -> None:
    anchors = generate_anchors(SPEC, 32, 32)
    cls = np.array([[3.0, -9.0], [2.0, -9.0], [1.0, 2.5], [0.0, -9.0]])  # two classes
    reg = np.zeros((4, 4))
    reg[0] = [0, 0, math.log(4.0), math.log(4.0)]  # anchor 0 grows to 64x64 around (0, 0): clipped
    dets = postprocess(cls, reg, anchors, SPEC, DecodeSpec(score_threshold=0.3, nms_iou=0.5), (32, 32))
    # scores: a0/c0 .953, a2/c1 .924, a1/c0 .881, a2/c0 .731, a3/c0 .5; boxes clipped to 0..32
    np.testing.assert_allclose(dets.boxes[0], [0, 0, 32, 32])
    # a1 [8,-8,24,8]->[8,0,24,8] inside a0's clipped box: IoU 128/1024 keeps it; same for a2, a3
    assert dets.labels.tolist() == [0, 1, 0, 0, 0]
    limited = postprocess(cls, reg, anchors, SPEC, DecodeSpec(score_threshold=0.3, max_detections=2), (32, 32))
    assert limited.scores.tolist() == pytest.approx([sigmoid(np.array(3.0)), sigmoid(np.array(2.5))])
    top1 = postprocess(cls, reg, anchors, SPEC, DecodeSpec(score_threshold=0.3, candidates_per_level=1), (32, 32))
    assert len(top1) == 1 and top1.scores[0] == pytest.approx(float(sigmoid(np.array(3.0))))


def test_postprocess_names_an_anchor_mismatch() -> None:
    anchors = generate_anchors(SPEC, 32, 32)
    with pytest.raises(ValueError, match="gave 5 class and 5 box anchors; the manifest's anchors give 4"):
        postprocess(np.zeros((5, 1)), np.zeros((5, 4)), anchors, SPEC, DecodeSpec(), (32, 32))
