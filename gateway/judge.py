"""One photo's bytes -> its verdict (and recapture request): decode, assess, decide, build the messages.

Shared by the service and by ``check``; knows nothing of MQTT. It never raises for what a device sends:
bad bytes give an ``error`` verdict with a reason, and an unexpected failure gives ``error``/``internal``.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import structlog

from gateway.assessment import Assessment
from gateway.backends.base import Backend
from gateway.config import GatewayConfig
from gateway.decode import DecodeError, DecodeLimits, DecodePlan, check_decoders, decode_planned, plan
from gateway.memory_budget import BudgetTimeout, MemoryBudget
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

_TEST_KILL_MARKER = os.environ.get("COLPOSCOPY_GATEWAY_TEST_KILL_MARKER", "").encode()
"""Tests only (unset in service): a photo whose bytes hold this marker kills the process at decode with SIGKILL, as
a decoder crash or the OOM killer would."""


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
        budget: MemoryBudget | None = None,
        busy_retry_after_ms: int = 2000,
    ) -> None:
        self.pipeline = pipeline
        self._policy = policy
        self._limits = limits
        self._long_side = analysis_long_side
        self._expiry = timedelta(seconds=recapture_expiry_s)
        self.budget = budget or MemoryBudget(limits.max_decoded_bytes, 0)
        """Shared by every thread that judges with this judge: the memory their decodes hold at once."""
        self._retry_after_ms = busy_retry_after_ms

    @property
    def policy(self) -> Policy:
        return self._policy

    def judge(self, request: PhotoRequest) -> Judged:
        started = time.monotonic()
        if _TEST_KILL_MARKER and _TEST_KILL_MARKER in request.payload:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            planned = plan(request.payload, self._limits, self._long_side)
        except DecodeError as exc:
            return Judged(self.error(request, Reason(exc.reason), exc.detail))
        try:
            with self.budget.reserve(planned.decoded_bytes):  # the pixels are held until the verdict is made
                return self._judge(request, planned, started)
        except BudgetTimeout as exc:
            detail = f"the gateway is short of memory for this photo: {exc}"
            return Judged(self.error(request, Reason.BUSY, detail, retry_after_ms=self._retry_after_ms))

    def _judge(self, request: PhotoRequest, planned: DecodePlan, started: float) -> Judged:
        try:
            decoded = decode_planned(request.payload, planned)
        except DecodeError as exc:
            return Judged(self.error(request, Reason(exc.reason), exc.detail))
        decoded_at = time.monotonic()
        backend = self.pipeline.slot.acquire()  # once: a switch-over must not mix two backends in one verdict
        try:
            assessment = self.pipeline.assess(decoded, backend)
            device = (request.site, request.device) if request.in_run else None
            decision = self._policy.decide(device, request.image_id, assessment)
        except Exception:
            log.exception("pipeline_failed", site=request.site, device=request.device, image_id=request.image_id)
            failed = self.error(request, Reason.INTERNAL, "the gateway failed to assess this photo", backend=backend)
            return Judged(failed)
        finally:
            self.pipeline.slot.release(backend)  # a replaced backend closes once no photo holds it
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
        self,
        request: PhotoRequest,
        reason: Reason,
        detail: str,
        retry_after_ms: int | None = None,
        backend: Backend | None = None,
    ) -> VerdictMessage:
        """An ``error`` verdict for a photo that could not be judged; ``backend``: the one that failed on it (the
        slot may have switched away from it since, e.g. after its third failure in a row)."""
        backend = backend or self.pipeline.backend
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
            backend=backend.name,
            models=dict(backend.models),
            timings_ms={"total": _ms(time.monotonic() - request.received_monotonic)},
            received_at=request.received_at,
            decided_at=utc_timestamp(),
        )


def build_judge(config: GatewayConfig, backend: Backend | None = None) -> Judge:
    """The judge the config describes: its backend (or ``backend``), exposure checks, policy and decode limits."""
    check_decoders()  # a missing libturbojpeg stops the start, not every JPEG
    settings = config.decode
    limits = DecodeLimits(
        max_bytes=settings.max_payload_bytes,
        max_pixels=settings.max_pixels,
        max_decoded_bytes=settings.max_decoded_bytes,
    )
    return Judge(
        # the blur type is measured where the policy uses it: out of focus, below the borderline band
        Pipeline(
            backend or load_backend(config),
            config.exposure,
            config.policy.out_of_focus_below,
        ),
        Policy(config.policy),
        limits,
        settings.analysis_long_side,
        config.policy.recapture_expiry_s,
        MemoryBudget(settings.memory_budget_bytes, settings.memory_wait_s),
        config.processing.busy_retry_after_ms,
    )
