"""The one small interface every backend implements (classical now; ONNX Runtime and TensorRT plug in here).

A backend locates the cervix and judges focus on an upright BGR image. It knows nothing of MQTT, of
payload bytes or of verdicts; exposure is checked by the pipeline for all backends alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import structlog

from gateway.assessment import Box, CervixFinding, FocusFinding
from gateway.runtimes.runtime import Runtime

log = structlog.get_logger(__name__)


class Detector(Protocol):
    def locate(self, image: np.ndarray) -> CervixFinding: ...


class FocusJudge(Protocol):
    def judge(self, image: np.ndarray, box: Box | None) -> FocusFinding: ...


@dataclass(frozen=True)
class Backend:
    name: str
    """Reported in every verdict and in the availability status, e.g. ``classical``."""
    models: Mapping[str, str]
    """Model name -> version, reported likewise."""
    detector: Detector
    focus: FocusJudge
    runtimes: tuple[Runtime, ...] = ()
    """What ``close`` releases (the learned backends' runtimes)."""

    def close(self) -> None:
        """Close every runtime, best-effort (one that raises does not keep the others open)."""
        for runtime in self.runtimes:
            try:
                runtime.close()
            except Exception:
                log.exception("runtime_close_failed", backend=self.name)
