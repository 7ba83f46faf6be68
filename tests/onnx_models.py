"""Tiny ONNX models built with onnx.helper, whose outputs the tests control, and manifests describing them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _batch_zero(input_name: str, rank: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes making ``zero`` of shape [N, 1, ..., 1] (``rank`` dims) from the input, so outputs follow its batch."""
    return [
        helper.make_node("ReduceMean", [input_name], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "zshape"], ["mean"]),
        helper.make_node("Mul", ["mean", "zero_c"], ["zero"]),
    ], [
        numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), dtype=np.int64), "zshape"),
        numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero_c"),
    ]


def constant_retinanet(
    path: Path, size: int, cls_logits: np.ndarray, bbox_regression: np.ndarray, input_name: str = "images"
) -> Path:
    """Input [N, 3, size, size]; outputs cls_logits [N, A, C] and bbox_regression [N, A, 4] equal to the given
    ``[A, C]`` and ``[A, 4]`` arrays for every image."""
    nodes, inits = _batch_zero(input_name, 3)
    nodes += [
        helper.make_node("Add", ["zero", "cls_c"], ["cls_logits"]),
        helper.make_node("Add", ["zero", "reg_c"], ["bbox_regression"]),
    ]
    inits += [
        numpy_helper.from_array(cls_logits.astype(np.float32)[None], "cls_c"),
        numpy_helper.from_array(bbox_regression.astype(np.float32)[None], "reg_c"),
    ]
    a, c = cls_logits.shape
    graph = helper.make_graph(
        nodes,
        "retinanet",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["N", a, c]),
            helper.make_tensor_value_info("bbox_regression", TensorProto.FLOAT, ["N", a, 4]),
        ],
        inits,
    )
    return _save(graph, path)


def mean_classifier(
    path: Path,
    size: int,
    gain: float,
    bias: float,
    input_name: str = "crops",
    blur_type: tuple[float, float] | None = None,
) -> Path:
    """Input [N, 3, size, size]; logits [N, 2] = [0, gain * mean(input) + bias] (softmax over [not_sharp, sharp]);
    with ``blur_type`` = (motion_gain, motion_bias) a second output, blur_type [N, 2] =
    [0, motion_gain * mean(input) + motion_bias] (softmax over [defocus, motion])."""
    nodes, inits = _batch_zero(input_name, 2)
    heads = [("logits", gain, bias)] + ([("blur_type", *blur_type)] if blur_type is not None else [])
    for name, head_gain, head_bias in heads:
        nodes += [
            helper.make_node("Mul", ["mean", f"{name}_gain"], [f"{name}_scaled"]),
            helper.make_node("Add", [f"{name}_scaled", f"{name}_bias"], [f"{name}_value"]),
            helper.make_node("Concat", ["zero", f"{name}_value"], [name], axis=1),
        ]
        inits += [
            numpy_helper.from_array(np.array(head_gain, dtype=np.float32), f"{name}_gain"),
            numpy_helper.from_array(np.array(head_bias, dtype=np.float32), f"{name}_bias"),
        ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 2]) for name, _, _ in heads],
        inits,
    )
    return _save(graph, path)


def typed_classifier(
    path: Path, size: int, bias: float, motion_bias: float, gain: float = 0.0, motion_gain: float = 0.0
) -> Path:
    """A ``mean_classifier`` with the blur_type output: constant with ``motion_gain`` 0, else following the input."""
    return mean_classifier(path, size, gain, bias, blur_type=(motion_gain, motion_bias))


def conv_classifier(path: Path, size: int, seed: int = 0, input_name: str = "crops") -> Path:
    """A small real network (Conv, Relu, global pool, Gemm) -> logits [N, 2]: something to quantize."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", [input_name, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (2, 8)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(2, dtype=np.float32), "b2"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    return _save(graph, path)


# --- the hand-computed detector case used across tests
# Input 32x32, one level: stride 16, size 16, ratio 1, scale 1 -> a 2x2 grid of 16x16 anchors:
#   [-8,-8,8,8], [8,-8,24,8], [-8,8,8,24], [8,8,24,24].
# Anchor 3 (centre 16,16) scores sigmoid(2) = 0.8808; deltas dx=0.25, dy=0, dw=log(1.5), dh=0 move its centre
# to (20, 16) and make it 24 wide, 16 high: box [8, 8, 32, 24] in input pixels.
DETECTOR_SIZE = 32
DETECTOR_CLS = np.array([[-5.0], [-5.0], [-4.0], [2.0]])
DETECTOR_REG = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0.25, 0.0, np.log(1.5), 0.0]])
DETECTOR_BOX = (8.0, 8.0, 32.0, 24.0)
DETECTOR_SCORE = float(1 / (1 + np.exp(-2.0)))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card() -> dict[str, Any]:
    return {"summary": "test model", "data": "none: built by the tests", "split": "none", "metrics": {}}


def detector_entry(onnx_path: Path, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "cervix-detector",
        "version": "0.0.1",
        "task": "cervix_detector",
        "onnx": onnx_path.name,
        "sha256": sha256(onnx_path),
        "input": {
            "name": "images",
            "shape": [-1, 3, DETECTOR_SIZE, DETECTOR_SIZE],
            "resize": "stretch",
        },
        "outputs": [
            {"role": "cls_logits", "name": "cls_logits", "shape": [-1, 4, 1], "meaning": "cervix logit per anchor"},
            {"role": "bbox_regression", "name": "bbox_regression", "shape": [-1, 4, 4], "meaning": "box deltas"},
        ],
        "labels": ["cervix"],
        "threshold": 0.5,
        "anchors": {"strides": [16], "sizes": [16], "aspect_ratios": [1.0], "scales": [1.0]},
        "card": card(),
    }
    entry.update(changes)
    return entry


def classifier_entry(onnx_path: Path, size: int = 16, threshold: float = 0.6, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "focus-classifier",
        "version": "0.0.2",
        "task": "focus_classifier",
        "onnx": onnx_path.name,
        "sha256": sha256(onnx_path),
        "input": {"name": "crops", "shape": [-1, 3, size, size], "resize": "stretch"},
        "outputs": [{"role": "logits", "name": "logits", "shape": [-1, 2], "meaning": "[not_sharp, sharp] logits"}],
        "labels": ["not_sharp", "sharp"],
        "threshold": threshold,
        "card": card(),
    }
    entry.update(changes)
    return entry


BLUR_TYPE_OUTPUT = {
    "role": "blur_type_logits", "name": "blur_type", "shape": [-1, 2], "meaning": "[defocus, motion] logits (softmax)"
}  # fmt: skip


def typed_entry(onnx_path: Path, **changes: Any) -> dict[str, Any]:
    """The entry of a ``typed_classifier``: logits and blur_type_logits."""
    entry = classifier_entry(onnx_path, **changes)
    entry["outputs"] = [*entry["outputs"], BLUR_TYPE_OUTPUT]
    return entry


def write_manifest(folder: Path, entries: list[dict[str, Any]]) -> Path:
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({"schema": "colposcopy-gateway/models/1", "models": entries}, sort_keys=False))
    return path


def detector_and_classifier(
    folder: Path, gain: float = 0.0, bias: float = 1.0, motion_bias: float | None = None
) -> Path:
    """A manifest with the hand-computed detector and a mean classifier (constant logits [0, 1] by default); with
    ``motion_bias`` a ``typed_classifier`` (motion probability sigmoid(motion_bias)), FP32 references beside."""
    from gateway.engines.reference import write_references

    folder.mkdir(parents=True, exist_ok=True)
    det = constant_retinanet(folder / "detector.onnx", DETECTOR_SIZE, DETECTOR_CLS, DETECTOR_REG)
    if motion_bias is None:
        cls = mean_classifier(folder / "classifier.onnx", 16, gain, bias)
        return write_manifest(folder, [detector_entry(det), classifier_entry(cls)])
    typed = typed_classifier(folder / "classifier.onnx", 16, bias, motion_bias, gain=gain)
    manifest = write_manifest(folder, [detector_entry(det), typed_entry(typed)])
    write_references(manifest)
    return manifest


def detector_and_typed_classifier(folder: Path, motion_bias: float = 3.0) -> Path:
    """``detector_and_classifier`` with a typed classifier that says not sharp (raw 0.047)."""
    return detector_and_classifier(folder, bias=-3.0, motion_bias=motion_bias)


def fused_classifier(path: Path, size: int, weights: np.ndarray, bias: float, measures: str = "measures") -> Path:
    """Inputs crops [N, 3, size, size] and measures [N, K]; logits [N, 2] = [0, measures @ weights + bias]."""
    nodes, inits = _batch_zero("crops", 2)
    nodes += [
        helper.make_node("MatMul", [measures, "weights"], ["dot"]),
        helper.make_node("Add", ["dot", "bias"], ["plain"]),
        helper.make_node("Add", ["plain", "zero"], ["sharp"]),
        helper.make_node("Concat", ["zero", "sharp"], ["logits"], axis=1),
    ]
    inits += [
        numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(-1, 1), "weights"),
        numpy_helper.from_array(np.array(bias, dtype=np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "fused",
        [
            helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["N", 3, size, size]),
            helper.make_tensor_value_info(measures, TensorProto.FLOAT, ["N", len(weights)]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    return _save(graph, path)
