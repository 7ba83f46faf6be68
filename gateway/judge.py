"""One photo's bytes -> its verdict (and recapture request): decode, assess, decide, build the messages.

Shared by the service and by ``check``; knows nothing of MQTT. It never raises for what a device sends:
bad bytes give an ``error`` verdict with a reason, and an unexpected failure gives ``error``/``internal``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import structlog

from gateway.assessment import Assessment
from gateway.config import GatewayConfig
from gateway.decode import DecodeError, DecodeLimits, decode
from gateway.pipeline import Pipeline, load_backend
from gateway.policy import Policy
from gateway.protocol import (
    CervixOut,
    ExposureOut,
    FocusOut,
    Outcome,
    Reason,
    RecaptureMessage,
    VerdictMessage,
    utc_timestamp,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PhotoRequest:
    site: str
    device: str
    image_id: str
    payload: bytes
    received_at: str = field(default_factory=utc_timestamp)
    received_monotonic: float = field(default_factory=time.monotonic)
    in_run: bool = True
    """False judges the photo alone, outside any device's recapture run (``check``)."""


@dataclass(frozen=True)
class Judged:
    verdict: VerdictMessage
    recapture: RecaptureMessage | None = None
    assessment: Assessment | None = None
    image: np.ndarray | None = None
    """The analysed (reduced-size, upright) pixels, for annotation."""


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)


class Judge:
    def __init__(
        self,
        pipeline: Pipeline,
        policy: Policy,
        limits: DecodeLimits,
        analysis_long_side: int,
        recapture_expiry_s: int,
    ) -> None:
        self.pipeline = pipeline
        self._policy = policy
        self._limits = limits
        self._long_side = analysis_long_side
        self._expiry = timedelta(seconds=recapture_expiry_s)

    def judge(self, request: PhotoRequest) -> Judged:
        started = time.monotonic()
        try:
            decoded = decode(request.payload, self._limits, self._long_side)
        except DecodeError as exc:
            return Judged(self.error(request, Reason(exc.reason), exc.detail))
        decoded_at = time.monotonic()
        backend = self.pipeline.backend  # once: a TensorRT switch-over must not mix two backends in one verdict
        try:
            assessment = self.pipeline.assess(decoded, backend)
            device = (request.site, request.device) if request.in_run else None
            decision = self._policy.decide(device, request.image_id, assessment)
        except Exception:
            log.exception("pipeline_failed", site=request.site, device=request.device, image_id=request.image_id)
            return Judged(self.error(request, Reason.INTERNAL, "the gateway failed to assess this photo"))
        done = time.monotonic()
        timings = {
            "queue": _ms(started - request.received_monotonic),
            "decode": _ms(decoded_at - started),
            "inference": _ms(done - decoded_at),
            **{k: round(v, 2) for k, v in assessment.timings_ms.items()},
            "total": _ms(done - request.received_monotonic),
        }
        cervix, focus, exposure = assessment.cervix, assessment.focus, assessment.exposure
        verdict = VerdictMessage(
            image_id=request.image_id,
            site=request.site,
            device=request.device,
            verdict=decision.outcome,
            reasons=decision.reasons,
            focus=FocusOut(label=decision.focus_label, sharp_probability=round(focus.sharp_probability, 4)),
            cervix=CervixOut(
                found=cervix.found,
                box=tuple(round(v, 4) for v in cervix.box) if cervix.found and cervix.box else None,  # type: ignore[arg-type]
                score=round(cervix.score, 4),
            ),
            exposure=ExposureOut(
                mean_luma=round(exposure.mean_luma, 1),
                too_dark=exposure.too_dark,
                overexposed=exposure.overexposed,
            ),
            best_image_id=decision.best_image_id,
            backend=backend.name,
            models=dict(backend.models),
            timings_ms=timings,
            received_at=request.received_at,
            decided_at=utc_timestamp(),
        )
        recapture = None
        if decision.outcome is Outcome.RECAPTURE:
            recapture = RecaptureMessage(
                image_id=request.image_id,
                site=request.site,
                device=request.device,
                reasons=decision.reasons,
                guidance=decision.guidance,
                expires_at=utc_timestamp(datetime.now(timezone.utc) + self._expiry),
            )
        return Judged(verdict, recapture, assessment, decoded.pixels)

    def error(
        self, request: PhotoRequest, reason: Reason, detail: str, retry_after_ms: int | None = None
    ) -> VerdictMessage:
        """An ``error`` verdict for a photo that could not be judged."""
        return VerdictMessage(
            image_id=request.image_id,
            site=request.site,
            device=request.device,
            verdict=Outcome.ERROR,
            reasons=[reason],
            focus=None,
            cervix=None,
            retry_after_ms=retry_after_ms,
            detail=detail,
            backend=self.pipeline.backend.name,
            models=dict(self.pipeline.backend.models),
            timings_ms={"total": _ms(time.monotonic() - request.received_monotonic)},
            received_at=request.received_at,
            decided_at=utc_timestamp(),
        )


def build_judge(config: GatewayConfig) -> Judge:
    """The judge the config describes: its backend, exposure checks, policy and decode limits."""
    limits = DecodeLimits(max_bytes=config.decode.max_payload_bytes, max_pixels=config.decode.max_pixels)
    return Judge(
        Pipeline(load_backend(config), config.exposure, config.policy.sharp_threshold),
        Policy(config.policy),
        limits,
        config.decode.analysis_long_side,
        config.policy.recapture_expiry_s,
    )
