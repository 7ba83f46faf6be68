"""The running gateway: wires transport, a bounded queue, worker threads and the judge.

Flow: MQTT network thread -> ``_accept`` (parse topic and properties, route the reply, enqueue or answer
``busy``) -> worker thread -> ``Judge`` -> publish verdict (and recapture request) -> log.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Literal

import structlog

from gateway import __version__
from gateway.backends.slot import BackendSlot
from gateway.config import GatewayConfig
from gateway.judge import Judge, Judged, PhotoRequest
from gateway.protocol import (
    Reason,
    StatusMessage,
    TopicError,
    Topics,
    VerdictMessage,
    derive_image_id,
    is_valid_id,
    utc_timestamp,
)
from gateway.transport import IncomingPhoto, MqttTransport, Outgoing

log = structlog.get_logger(__name__)

IMAGE_ID_PROPERTY = "image-id"


@dataclass(frozen=True)
class _Job:
    request: PhotoRequest
    reply_topic: str
    correlation_data: bytes | None


class GatewayService:
    def __init__(self, config: GatewayConfig, judge: Judge) -> None:
        self._config = config
        self._judge = judge
        self._topics = Topics(config.topic_prefix)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=config.processing.queue_size)
        self._workers = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(config.processing.worker_count())
        ]
        self._since = utc_timestamp()
        self._status_topic = self._topics.status(config.gateway_id)
        self._transport = MqttTransport(
            config.broker,
            self._topics.image_subscriptions,
            will=self._status("offline"),
            on_photo=self._accept,
            on_connected=self._announce,
            receive_maximum=config.processing.queue_size + len(self._workers),
        )

    @property
    def connected(self) -> threading.Event:
        return self._transport.connected

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._transport.start()
        self._judge.pipeline.slot.on_change(self._backend_changed)
        backend = self._judge.pipeline.backend
        log.info(
            "gateway_started",
            gateway_id=self._config.gateway_id,
            version=__version__,
            backend=backend.name,
            models=dict(backend.models),
            workers=len(self._workers),
            queue_size=self._config.processing.queue_size,
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """Finish the photos already queued, publish offline, disconnect."""
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(grace_s)
        self._transport.stop(last=self._status("offline"))
        log.info("gateway_stopped", gateway_id=self._config.gateway_id)

    def _status(self, state: Literal["online", "offline", "degraded"]) -> Outgoing:
        slot = self._judge.pipeline.slot
        backend = slot.current
        message = StatusMessage(
            gateway_id=self._config.gateway_id,
            state=state,
            version=__version__,
            backend=backend.name,
            models=dict(backend.models),
            since=self._since,
            detail=slot.reason if state == "degraded" else None,
        )
        return Outgoing(self._status_topic, message.to_json(), retain=True)

    def _announce(self) -> None:
        """Publish the availability status (online or degraded): on every (re)connect."""
        self._transport.publish(self._status(self._judge.pipeline.slot.state))

    def _backend_changed(self, _slot: BackendSlot) -> None:
        """A background TensorRT build finished or failed: republish the status (if offline, the next
        connect announces it anyway)."""
        if self._transport.connected.is_set():
            self._announce()

    def _accept(self, photo: IncomingPhoto) -> None:
        """Runs on the network thread: must not block."""
        try:
            parsed = self._topics.parse_image_topic(photo.topic)
        except TopicError as exc:
            log.warning("topic_dropped", topic=photo.topic[:200], why=str(exc))
            return
        site, device = parsed.site, parsed.device
        claimed = next((v for k, v in photo.user_properties if k == IMAGE_ID_PROPERTY), None)
        image_id = claimed if claimed is not None else parsed.image_id or derive_image_id(photo.payload)
        reply_topic = self._topics.verdicts(site, device)
        if photo.response_topic is not None:
            if self._topics.response_topic_allowed(photo.response_topic, site, device):
                reply_topic = photo.response_topic
            else:
                log.warning(
                    "response_topic_refused",
                    site=site,
                    device=device,
                    response_topic=photo.response_topic[:200],
                )
        valid_id = is_valid_id(image_id)
        request = PhotoRequest(site, device, image_id if valid_id else derive_image_id(photo.payload), photo.payload)
        job = _Job(request, reply_topic, photo.correlation_data)
        if not valid_id:
            detail = f"the {IMAGE_ID_PROPERTY} user property must be 1..64 characters of [A-Za-z0-9._-]"
            self._reply(job, self._judge.error(request, Reason.BAD_IMAGE_ID, detail))
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            retry = self._config.processing.busy_retry_after_ms
            self._reply(job, self._judge.error(request, Reason.BUSY, "the gateway is busy", retry_after_ms=retry))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                judged = self._judge.judge(job.request)
                self._reply(job, judged.verdict, judged)
            except Exception:  # a worker must outlive any one photo
                log.exception("worker_failed", image_id=job.request.image_id)

    def _reply(self, job: _Job, verdict: VerdictMessage, judged: Judged | None = None) -> None:
        self._transport.publish(Outgoing(job.reply_topic, verdict.to_json(), correlation_data=job.correlation_data))
        if judged is not None and judged.recapture is not None:
            topic = self._topics.recapture(verdict.site, verdict.device)
            expiry = self._config.policy.recapture_expiry_s
            self._transport.publish(Outgoing(topic, judged.recapture.to_json(), expiry_s=expiry))
        log.info(
            "verdict",
            site=verdict.site,
            device=verdict.device,
            image_id=verdict.image_id,
            verdict=verdict.verdict,
            reasons=verdict.reasons,
            sharp_probability=verdict.focus.sharp_probability if verdict.focus else None,
            bytes=len(job.request.payload),
            timings_ms=verdict.timings_ms,
        )
