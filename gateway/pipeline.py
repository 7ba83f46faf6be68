"""Decoded image -> assessment: locate the cervix, judge focus on it, check exposure. No MQTT here."""

from __future__ import annotations

import dataclasses
import time

from gateway.assessment import Assessment
from gateway.backends.base import Backend
from gateway.backends.slot import BackendSlot
from gateway.config import GatewayConfig
from gateway.decode import DecodedImage
from gateway.exposure import ExposureConfig, check_exposure
from gateway.focus_measures import blur_type


def load_backend(config: GatewayConfig) -> BackendSlot:
    """The backend the config asks for (``backend:``; see gateway/backends/select.py), in a slot that a
    background TensorRT build switches over when its engines are ready."""
    from gateway.backends.select import select_backend

    return select_backend(config)


class Pipeline:
    def __init__(self, backend: Backend | BackendSlot, exposure: ExposureConfig, blur_type_below: float = 0.5) -> None:
        """``blur_type_below``: the blur type is measured for photos under this sharp probability (where the
        policy calls a photo out of focus), when the backend did not measure it."""
        self.slot = backend if isinstance(backend, BackendSlot) else BackendSlot(backend, "given")
        self._exposure = exposure
        self._blur_type_below = blur_type_below

    @property
    def backend(self) -> Backend:
        """The backend in use now (it may change once, when TensorRT engines finish building)."""
        return self.slot.current

    def assess(self, decoded: DecodedImage, backend: Backend | None = None) -> Assessment:
        """Assess with ``backend`` (default: the current one, taken once so a switch-over never mixes two)."""
        backend = backend or self.slot.current
        image = decoded.pixels
        t0 = time.perf_counter()
        cervix = backend.detector.locate(image)
        t1 = time.perf_counter()
        box = cervix.box if cervix.found else None
        focus = backend.focus.judge(image, box)
        if focus.blur_type is None and focus.sharp_probability < self._blur_type_below:  # whatever the backend
            focus = dataclasses.replace(focus, blur_type=blur_type(image, box))
        t2 = time.perf_counter()
        exposure = check_exposure(image, box, self._exposure)
        t3 = time.perf_counter()
        timings = {"locate": (t1 - t0) * 1e3, "focus": (t2 - t1) * 1e3, "exposure": (t3 - t2) * 1e3}
        return Assessment(cervix=cervix, focus=focus, exposure=exposure, timings_ms=timings)
