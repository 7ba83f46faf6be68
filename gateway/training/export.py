"""Torch modules -> ONNX files (opset 17, static H and W, dynamic batch) and their manifest entries."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from gateway.models.manifest import InputSpec, sha256_file

OPSET = 17
MAX_BYTES = 20 * 1024 * 1024


def export_onnx(
    module: nn.Module, path: Path, spec: InputSpec, outputs: list[str], extra: dict[str, int] | None = None
) -> Path:
    """Export ``module`` (eval mode, float32) with the spec's input name and size, and ``extra`` inputs
    ``[N, width]`` by name (a fused model's measures) after it; batch dimension dynamic."""
    module.eval()
    extra = extra or {}
    dummy = (torch.zeros(2, 3, spec.height, spec.width), *(torch.zeros(2, k) for k in extra.values()))
    axes = {spec.name: {0: "N"}}
    axes.update({name: {0: "N"} for name in [*extra, *outputs]})
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            dummy,
            str(path),
            input_names=[spec.name, *extra],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes, over the {MAX_BYTES} limit")
    return path


def ops(path: Path) -> list[str]:
    """The distinct ONNX op types of a file (for the model card: all of them run on TensorRT)."""
    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


def session(path: Path, threads: int = 2) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    module: nn.Module, path: Path, spec: InputSpec, tol: float = 1e-3, extra: dict[str, int] | None = None
) -> float:
    """Largest absolute difference between torch and ONNX Runtime on random inputs; raises over ``tol``."""
    rng = np.random.default_rng(0)
    feeds = {spec.name: rng.normal(0, 1, (2, 3, spec.height, spec.width)).astype(np.float32)}
    feeds.update({name: rng.normal(0, 1, (2, k)).astype(np.float32) for name, k in (extra or {}).items()})
    with torch.no_grad():
        expected = module(*(torch.from_numpy(v) for v in feeds.values()))
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session(path).run(None, feeds)
    worst = max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got, strict=True))
    if worst > tol:
        raise ValueError(f"{path.name}: ONNX Runtime differs from torch by {worst}")
    return worst


def entry(
    name: str, version: str, task: str, path: Path, spec: InputSpec, outputs: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    """A manifest entry (a plain mapping, dumped to YAML) for an exported file."""
    return {
        "name": name,
        "version": version,
        "task": task,
        "onnx": path.name,
        "sha256": sha256_file(path),
        "input": {
            "name": spec.name,
            "shape": list(spec.shape),
            "colour": spec.colour,
            "scale": spec.scale,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "resize": spec.resize,
            "pad_value": spec.pad_value,
        },
        "outputs": outputs,
        **fields,
    }
