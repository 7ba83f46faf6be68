"""RetinaNet decoding in vectorised numpy, matching torchvision so a torchvision-trained model decodes the same.

* anchors: torchvision ``AnchorGenerator`` (base anchors rounded, centred on ``stride * (x, y)``; per level,
  row-major over the feature map, each location ratio-major then scale);
* box coding: torchvision ``BoxCoder`` (``dx, dy, dw, dh`` divided by the weights, ``dw, dh`` clamped);
* post-processing: torchvision ``RetinaNet.postprocess_detections`` (sigmoid scores, per-level score threshold
  and top-k, decode, clip to the input, class-wise NMS, keep the best ``max_detections``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gateway.models.manifest import AnchorSpec, DecodeSpec


def base_anchors(size: float, aspect_ratios: tuple[float, ...], scales: tuple[float, ...]) -> np.ndarray:
    """``[R*S, 4]`` anchors centred on 0 for one level (ratio-major, then scale), rounded as torchvision does."""
    sizes = size * np.asarray(scales, dtype=np.float64)
    h_ratios = np.sqrt(np.asarray(aspect_ratios, dtype=np.float64))
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2.0)


@dataclass(frozen=True)
class Anchors:
    boxes: np.ndarray
    """``[A, 4]`` x0, y0, x1, y1 in input pixels."""
    level_counts: tuple[int, ...]
    """Anchors per pyramid level, in order (they sum to A)."""


@lru_cache(maxsize=16)
def generate_anchors(spec: AnchorSpec, height: int, width: int) -> Anchors:
    """All anchors for an input of ``height`` x ``width`` (cached; the arrays are read-only)."""
    levels, counts = [], []
    for (grid_h, grid_w), stride, size in zip(spec.grid(height, width), spec.strides, spec.sizes, strict=True):
        base = base_anchors(size, spec.aspect_ratios, spec.scales)
        ys, xs = np.meshgrid(np.arange(grid_h) * stride, np.arange(grid_w) * stride, indexing="ij")
        shifts = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        level = (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)
        levels.append(level)
        counts.append(len(level))
    boxes = np.concatenate(levels).astype(np.float32)
    boxes.setflags(write=False)
    return Anchors(boxes, tuple(counts))


def decode_boxes(
    deltas: np.ndarray,
    anchors: np.ndarray,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = float(np.log(1000.0 / 16)),
) -> np.ndarray:
    """``[K, 4]`` regression deltas on ``[K, 4]`` anchors -> ``[K, 4]`` boxes (x0, y0, x1, y1)."""
    anchors = anchors.astype(np.float64)
    deltas = deltas.astype(np.float64)
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = np.minimum(deltas[:, 2] / ww, clip), np.minimum(deltas[:, 3] / wh, clip)
    pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
    pred_w, pred_h = np.exp(dw) * widths, np.exp(dh) * heights
    return np.stack(
        [pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h, pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h],
        axis=1,
    )


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[4]`` box with ``[K, 4]`` boxes (areas without the +1 of old detectors, as torchvision)."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    A box is dropped when its IoU with a kept, higher-scoring box is above ``iou_threshold``. Equal scores keep
    the lower index first (a stable sort), so results are deterministic.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each label only (boxes of different labels never suppress each other)."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = labels.astype(np.float64) * (float(boxes.max()) + 1.0)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray
    """``[K, 4]`` x0, y0, x1, y1 in input pixels, best score first."""
    scores: np.ndarray
    """``[K]`` sigmoid class scores."""
    labels: np.ndarray
    """``[K]`` class indices (into the manifest's labels)."""

    def __len__(self) -> int:
        return len(self.scores)


def sigmoid(x: np.ndarray) -> np.ndarray:
    values: np.ndarray = np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))
    return values


def postprocess(
    cls_logits: np.ndarray,
    bbox_regression: np.ndarray,
    anchors: Anchors,
    spec: AnchorSpec,
    decode: DecodeSpec,
    image_size: tuple[int, int],
) -> Detections:
    """One image's ``[A, C]`` logits and ``[A, 4]`` deltas -> detections in input pixels.

    ``image_size`` is the input's ``(height, width)``; boxes are clipped to it.
    """
    total = len(anchors.boxes)
    if cls_logits.shape[0] != total or bbox_regression.shape != (total, 4):
        raise ValueError(
            f"the model gave {cls_logits.shape[0]} class and {bbox_regression.shape[0]} box anchors;"
            f" the manifest's anchors give {total}"
        )
    num_classes = cls_logits.shape[1]
    picked_boxes, picked_scores, picked_labels = [], [], []
    start = 0
    for count in anchors.level_counts:
        scores = sigmoid(cls_logits[start : start + count]).ravel()
        candidates = np.flatnonzero(scores > decode.score_threshold)
        if candidates.size > decode.candidates_per_level:
            top = np.argpartition(-scores[candidates], decode.candidates_per_level - 1)
            candidates = candidates[top[: decode.candidates_per_level]]
        anchor_idx, label = np.divmod(candidates, num_classes)
        anchor_idx = anchor_idx + start
        boxes = decode_boxes(bbox_regression[anchor_idx], anchors.boxes[anchor_idx], spec.box_weights, spec.box_clip)
        picked_boxes.append(boxes)
        picked_scores.append(scores[candidates])
        picked_labels.append(label)
        start += count
    boxes = np.concatenate(picked_boxes) if picked_boxes else np.zeros((0, 4))
    scores = np.concatenate(picked_scores) if picked_scores else np.zeros(0)
    labels = np.concatenate(picked_labels) if picked_labels else np.zeros(0, dtype=np.int64)
    height, width = image_size
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    keep = batched_nms(boxes, scores, labels, decode.nms_iou)[: decode.max_detections]
    return Detections(boxes[keep], scores[keep], labels[keep].astype(np.int64))
