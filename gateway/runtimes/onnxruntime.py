"""ONNX Runtime: runs the manifest's ONNX files on the CPU, or on the CUDA execution provider when present.

ONNX Runtime's ``TensorrtExecutionProvider`` is used only when ``models.onnxruntime_providers`` names it: it builds
its own engine, uncached, on the first inference (about 9.5 minutes on an Orin 16 GB, past the watchdog), beside the
gateway's own TensorRT builder. Optional dependency (``pip install colposcopy-gateway[onnx]``): without it the
gateway falls back to the classical assessor. A session is thread-safe, so worker threads share one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.runtimes.runtime import InferenceError, TensorInfo

ENGINE = "onnxruntime"
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
"""Without ``models.onnxruntime_providers``; never ``TensorrtExecutionProvider`` (see the module docstring)."""
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _module() -> Any:
    import onnxruntime

    return onnxruntime


def probe() -> tuple[bool, str]:
    """Whether ONNX Runtime imports here, and what it offers (or why not)."""
    try:
        ort = _module()
    except ImportError as exc:
        return False, f"onnxruntime is not installed ({exc}); pip install 'colposcopy-gateway[onnx]'"
    return True, f"onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}"


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested providers that exist here (else CUDA where it exists: never TensorRT unasked), CPU last."""
    wanted = list(requested) or list(PREFERRED_PROVIDERS)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _info(arg: Any) -> TensorInfo:
    dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return TensorInfo(name=str(arg.name), shape=dims, dtype=_DTYPES.get(str(arg.type), str(arg.type)))


class OnnxRuntime:
    """One ONNX model in one ``InferenceSession``."""

    engine = ENGINE

    def __init__(self, path: Path, providers: Sequence[str] = (), threads: int = 0, memory_arena: bool = False) -> None:
        ort = _module()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The CPU arena keeps every extension it ever made (in power-of-two steps as batch sizes vary): the gateway's
        # resident memory stepped up by 24-81 MB at a time under load and settled near 365 MB; without it, 200 MB
        # and flat, its tensors served by malloc (jemalloc under the systemd unit). docs/benchmarks.md has the run.
        options.enable_cpu_mem_arena = memory_arena
        # Each session has its own thread pool; spinning threads of one model steal the cores of the next (the
        # detector then the focus model ran about 2x slower on 2 cores: 50 ms instead of 28 ms per photo).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        chosen = choose_providers(providers, ort.get_available_providers())
        try:
            self._session: Any = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile...)
            raise InferenceError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.path = path
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        self._inputs = tuple(_info(a) for a in self._session.get_inputs())
        self._outputs = tuple(_info(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise InferenceError(f"{self.path.name}: the runtime is closed")
        try:
            values = session.run(self._output_names, dict(inputs))
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on {self.path.name}: {exc}") from exc
        return {name: np.asarray(value) for name, value in zip(self._output_names, values, strict=True)}

    def close(self) -> None:
        """Drop the session (it frees itself once no call holds it); later calls get InferenceError."""
        self._session = None
