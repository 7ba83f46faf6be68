"""Stop serving a runtime that keeps failing: after a sticky CUDA error every later call fails the same way, so
``limit`` consecutive failures of any one of a backend's runtimes call ``on_broken`` once; the selection then
switches to ONNX Runtime, ``degraded``, until the next start."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import numpy as np

from gateway.runtimes.runtime import InferenceError, Runtime, Wrapper


class FailureCount:
    def __init__(self, limit: int, on_broken: Callable[[str], None]) -> None:
        self.limit = limit
        self._on_broken = on_broken
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        """Consecutive failures per runtime: each has its own CUDA context, and the detector's successes must not
        hide a focus model that fails on every photo."""
        self._fired = False

    def success(self, runtime: str) -> None:
        with self._lock:
            self._failures[runtime] = 0

    def failure(self, runtime: str, error: str) -> None:
        with self._lock:
            self._failures[runtime] = self._failures.get(runtime, 0) + 1
            fire = self._failures[runtime] >= self.limit and not self._fired
            self._fired = self._fired or fire
        if fire:
            self._on_broken(error)


class Watched(Wrapper):
    """``inner``, each call's outcome counted in ``failures`` under ``name``."""

    def __init__(self, inner: Runtime, failures: FailureCount, name: str) -> None:
        super().__init__(inner)
        self._failures = failures
        self._name = name

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            out = self.inner.run(inputs)
        except InferenceError as exc:
            self._failures.failure(self._name, str(exc))
            raise
        self._failures.success(self._name)
        return out
