"""Stop serving a runtime that keeps failing: after a sticky CUDA error every later call fails the same way, so
``limit`` consecutive failures (across one backend's runtimes) call ``on_broken`` once; the selection then
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
        self._failures = 0
        self._fired = False

    def success(self) -> None:
        with self._lock:
            self._failures = 0

    def failure(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            fire = self._failures >= self.limit and not self._fired
            self._fired = self._fired or fire
        if fire:
            self._on_broken(error)


class Watched(Wrapper):
    """``inner``, each call's outcome counted in ``failures``."""

    def __init__(self, inner: Runtime, failures: FailureCount) -> None:
        super().__init__(inner)
        self._failures = failures

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            out = self.inner.run(inputs)
        except InferenceError as exc:
            self._failures.failure(str(exc))
            raise
        self._failures.success()
        return out

    def close(self) -> None:
        self.inner.close()
