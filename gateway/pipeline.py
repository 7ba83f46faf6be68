"""Decoded image -> assessment: locate the cervix, judge focus on it, check exposure. No MQTT here."""

from __future__ import annotations

import time

from gateway import __version__
from gateway.assessment import Assessment
from gateway.backends.base import Backend
from gateway.backends.classical import ClassicalDetector, ClassicalFocus
from gateway.config import GatewayConfig
from gateway.decode import DecodedImage
from gateway.exposure import ExposureConfig, check_exposure


def load_backend(config: GatewayConfig) -> Backend:
    """The backend the config asks for (only ``classical`` until the model engines land)."""
    return Backend(
        name="classical",
        models={"classical": __version__},
        detector=ClassicalDetector(config.classical),
        focus=ClassicalFocus(config.classical),
    )


class Pipeline:
    def __init__(self, backend: Backend, exposure: ExposureConfig) -> None:
        self.backend = backend
        self._exposure = exposure

    def assess(self, decoded: DecodedImage) -> Assessment:
        image = decoded.pixels
        t0 = time.perf_counter()
        cervix = self.backend.detector.locate(image)
        t1 = time.perf_counter()
        focus = self.backend.focus.judge(image, cervix.box if cervix.found else None)
        t2 = time.perf_counter()
        exposure = check_exposure(image, cervix.box if cervix.found else None, self._exposure)
        t3 = time.perf_counter()
        timings = {"locate": (t1 - t0) * 1e3, "focus": (t2 - t1) * 1e3, "exposure": (t3 - t2) * 1e3}
        return Assessment(cervix=cervix, focus=focus, exposure=exposure, timings_ms=timings)
