"""The tiny contract every inference engine implements: named tensors in, named tensors out.

A runtime knows nothing of what its tensors mean (``gateway.models`` does); it reports its inputs and outputs
so the manifest can be checked against the real model, and runs a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class InferenceError(RuntimeError):
    """The engine failed to load or run a model; the message says which and why."""


class PlanError(InferenceError):
    """A compiled plan does not deserialize here (another TensorRT version or GPU, or damaged): build it again.
    Other load failures (out of memory) say nothing against the plan."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]
    """``None`` for a dynamic dimension."""
    dtype: str
    """numpy dtype name, e.g. ``float32``."""


class Runtime(Protocol):
    @property
    def engine(self) -> str:
        """``onnxruntime`` or ``tensorrt``: what the verdicts report as their backend."""
        ...

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; thread-safe. Returns every output by name."""
        ...

    def close(self) -> None: ...


class Wrapper:
    """Base of a runtime around ``inner`` (batching, failure counting): the same engine and tensors."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner

    def close(self) -> None:
        self.inner.close()

    @property
    def engine(self) -> str:
        return self.inner.engine

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self.inner.inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self.inner.outputs


def shapes(infos: tuple[TensorInfo, ...]) -> dict[str, tuple[int | None, ...]]:
    return {info.name: info.shape for info in infos}
