"""The running gateway: wires transport, a bounded queue, worker threads, the verdict store and the judge.

Flow: MQTT network thread -> ``_accept`` (parse topic and properties, route the reply, enqueue or answer
``busy``) -> worker thread -> verdict store (a duplicate gets its stored verdict again) or ``Judge`` -> store ->
publish verdict (and recapture request) -> once the broker has them (PUBACK), acknowledge the photo -> log.

Every photo the gateway takes on is acknowledged only after its answer is with the broker, so a photo in flight
when the gateway dies is redelivered to its next session; the store makes that redelivery (or a device's resend)
get the same verdict, not a second judgement. On ``stop`` new photos are left unacknowledged for the broker to
redeliver, those in flight are finished within the grace period.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from gateway import __version__
from gateway.backends.slot import BackendSlot
from gateway.config import GatewayConfig
from gateway.judge import Judge, PhotoRequest
from gateway.metrics import Metrics
from gateway.protocol import (
    Reason,
    StatusMessage,
    TopicError,
    Topics,
    VerdictMessage,
    image_id_from_digest,
    is_valid_id,
    utc_timestamp,
)
from gateway.store import PhotoKey, StoredVerdict, VerdictStore
from gateway.systemd import Notifier
from gateway.transport import IncomingPhoto, MqttTransport, Outgoing, maximum_packet_size

log = structlog.get_logger(__name__)

IMAGE_ID_PROPERTY = "image-id"
STATUS_EXPIRY_INTERVALS = 3
"""The retained status expires after this many ``broker.status_interval_s`` without a republish."""
FINAL_PUBLISH_S = 2.0
"""On stop, after the grace: how long the offline status may take to reach the broker."""
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of messages it dropped since it started because a client's queue was full
(max_queued_bytes / max_queued_messages): after their PUBACK, so the devices were never told."""


#: Reasons whose verdicts are not stored: a later delivery of the same photo deserves a fresh try.
_TRANSIENT = frozenset({Reason.BUSY, Reason.INTERNAL})


@dataclass(frozen=True)
class _Job:
    request: PhotoRequest
    reply_topic: str
    correlation_data: bytes | None
    photo: IncomingPhoto


def _open_store(config: GatewayConfig) -> VerdictStore:
    """The configured store; if its file cannot be opened, an in-memory one (duplicates are then recognised
    only until a restart) rather than no gateway at all."""
    path, settings = config.store.resolved_path(), config.store
    try:
        return VerdictStore(path, settings.max_age_s, settings.max_entries)
    except (OSError, sqlite3.Error) as exc:
        log.error("verdict_store_unavailable", path=str(path), error=str(exc), fallback="memory")
        return VerdictStore(None, settings.max_age_s, settings.max_entries)


class GatewayService:
    def __init__(
        self,
        config: GatewayConfig,
        judge: Judge,
        store: VerdictStore | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._config = config
        self._judge = judge
        self._store = store if store is not None else _open_store(config)
        self._topics = Topics(config.topic_prefix)
        processing = config.processing
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=processing.queue_size)
        self._workers = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(processing.worker_count())
        ]
        self._in_flight: dict[PhotoKey, list[_Job]] = {}
        """Photos being judged, with the duplicates that arrived meanwhile (they get the same verdict)."""
        self._in_flight_lock = threading.Lock()
        self._unacked = 0
        self._settled = threading.Condition()
        self._stopping = threading.Event()
        self._halted = threading.Event()
        """Set when the shutdown grace is over: workers take no more photos (they stay for the broker)."""
        self._since = utc_timestamp()
        self._status_topic = self._topics.status(config.gateway_id)
        # Receive Maximum: as many unacknowledged photos as the workers and the queue hold, plus as many again
        # that overflow the queue and are answered busy at once, so overload reaches the gateway (and the
        # devices hear busy) rather than piling up unseen in the broker.
        capacity = processing.queue_size + len(self._workers)
        group = config.broker.share_group
        self._image_subscriptions = tuple(self._topics.shared(t, group) for t in self._topics.image_subscriptions)
        self._peers: dict[str, str] = {}
        self._broker_dropped: int | None = None
        """The broker's dropped-message count last seen (``BROKER_DROPPED_TOPIC``)."""
        """Other gateways' last availability state, from their retained status messages."""
        self._transport = MqttTransport(
            config.broker,
            (*self._image_subscriptions, self._topics.status_filter),
            will=self._status("offline"),
            on_photo=self._accept,
            on_connected=self._announce,
            receive_maximum=min(2 * capacity, 65535),
            maximum_packet_size=maximum_packet_size(config.decode.max_payload_bytes),
            optional_subscriptions=(BROKER_DROPPED_TOPIC,),
        )
        self._heartbeat = threading.Thread(target=self._beat_status, name="status-heartbeat", daemon=True)
        self._notifier = notifier or Notifier()
        self._metrics = Metrics(config.metrics, self.readiness, self._queue.qsize, self._transport.connected.is_set)
        judge.pipeline.slot.batches.subscribe(self._metrics.batch)

    @property
    def connected(self) -> threading.Event:
        return self._transport.connected

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics, /healthz and /readyz are served on; None when disabled or not bound."""
        return self._metrics.port

    def readiness(self) -> str | None:
        """None when ready to judge photos (connected and subscribed; the backend is loaded before the service
        is made), else why not."""
        if self._stopping.is_set():
            return "stopping"
        if not self._transport.connected.is_set():
            return f"not connected and subscribed to the broker at {self._config.broker.url}"
        return None

    def _describe(self) -> str:
        """The STATUS= line systemd shows."""
        if not self._transport.connected.is_set():
            return f"connecting to the broker at {self._config.broker.url}"
        slot = self._judge.pipeline.slot
        degraded = f" (degraded: {slot.reason})" if slot.state == "degraded" else ""
        building = "" if slot.wait_settled(0) else "; building TensorRT engines in the background"
        return f"serving: {slot.current.name}{degraded}, {self._metrics.decided()} photos judged{building}"

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._transport.start()
        self._heartbeat.start()
        self._judge.pipeline.slot.on_change(self._backend_changed)
        self._metrics.backend(self._judge.pipeline.slot)
        self._metrics.serve()
        self._notifier.start(lambda: self.readiness() is None, self._describe)
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

    def stop(self, grace_s: float | None = None) -> None:
        """Take no new photos, finish those queued and in flight within ``processing.shutdown_grace_s`` whatever the
        queue holds, publish offline (at most ``FINAL_PUBLISH_S`` more) and disconnect. Photos not answered by then
        stay unacknowledged, and the broker redelivers them; a worker still judging one is left behind."""
        deadline = time.monotonic() + (grace_s if grace_s is not None else self._config.processing.shutdown_grace_s)
        self._stopping.set()
        self._hand_over()
        self._notifier.stopping("stopping: finishing the photos in flight")
        for _ in self._workers:  # wakes idle workers; a full queue has none, and workers stop when it is empty
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._halted.set()
        while True:  # photos no worker took in time: left for the broker to redeliver
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._abandon()
        with self._settled:
            settled = self._settled.wait_for(lambda: self._unacked == 0, max(0.0, deadline - time.monotonic()))
        self._transport.stop(last=self._status("offline"), timeout_s=FINAL_PUBLISH_S)
        if not any(worker.is_alive() for worker in self._workers):
            self._store.close()  # else a worker may be inside it; the process exits anyway (WAL: nothing is lost)
        self._metrics.close()
        log.info("gateway_stopped", gateway_id=self._config.gateway_id, unanswered=0 if settled else self._unacked)

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
        expiry = STATUS_EXPIRY_INTERVALS * self._config.broker.status_interval_s
        return Outgoing(self._status_topic, message.to_json(), retain=True, expiry_s=expiry)

    def _announce(self) -> None:
        """Publish the availability status (online or degraded): on every (re)connect."""
        self._transport.publish(self._status(self._judge.pipeline.slot.state))

    def _beat_status(self) -> None:
        """Republish the status every ``broker.status_interval_s`` while connected, renewing its expiry."""
        interval = self._config.broker.status_interval_s
        while not self._stopping.wait(interval):
            if self._transport.connected.is_set():
                self._announce()

    def _backend_changed(self, slot: BackendSlot) -> None:
        """A background TensorRT build finished or failed: republish the status (if offline, the next
        connect announces it anyway)."""
        self._metrics.backend(slot)
        if self._transport.connected.is_set():
            self._announce()

    def _hand_over(self) -> None:
        """With a peer in the share group online, leave the group so the broker sends it the photos from now on.
        Alone, keep the subscription: the persistent session then queues photos until this gateway is back."""
        peers = sorted(g for g, state in self._peers.items() if state in ("online", "degraded"))
        if self._config.broker.share_group and peers:
            left = self._transport.unsubscribe(self._image_subscriptions)
            log.info("handed_over", peers=peers, unsubscribed=left)

    def _peer_status(self, gateway_id: str, photo: IncomingPhoto) -> None:
        if gateway_id != self._config.gateway_id:
            try:
                state = str(json.loads(photo.payload)["state"]) if photo.payload else "gone"
            except (ValueError, KeyError, TypeError):
                state = "unknown"
            self._peers[gateway_id] = state
        self._transport.ack(photo)

    def _broker_dropped_count(self, payload: bytes) -> None:
        """Log every increase of the broker's dropped-message count and export the count."""
        try:
            total = int(payload)
        except ValueError:
            log.warning("broker_dropped_unreadable", payload=payload[:40].decode(errors="replace"))
            return
        seen, self._broker_dropped = self._broker_dropped, total
        self._metrics.broker_dropped(total)
        # first value seen: everything since the broker started; lower than before: the broker restarted
        increase = total if seen is None or total < seen else total - seen
        if increase > 0:
            log.error(
                "broker_dropped_messages",
                dropped=increase,
                broker_total=total,
                since="broker start" if seen is None or total < seen else "last count",
                why="a client's queue at the broker was full (max_queued_bytes/max_queued_messages); photos among"
                " them are never answered unless their devices send them again",
            )

    def _accept(self, photo: IncomingPhoto) -> None:
        """Runs on the network thread: must not block."""
        if (peer := self._topics.status_gateway(photo.topic)) is not None:
            self._peer_status(peer, photo)
            return
        if photo.topic == BROKER_DROPPED_TOPIC:
            self._broker_dropped_count(photo.payload)
            return
        if self._stopping.is_set():
            return  # not acknowledged: the broker redelivers it to this session's next connection
        self._metrics.photo_received()
        with self._settled:
            self._unacked += 1
        try:
            parsed = self._topics.parse_image_topic(photo.topic)
        except TopicError as exc:
            log.warning("topic_dropped", topic=photo.topic[:200], why=str(exc))
            self._metrics.error("topic_dropped")
            self._acknowledge(photo)
            return
        site, device = parsed.site, parsed.device
        claimed = next((v for k, v in photo.user_properties if k == IMAGE_ID_PROPERTY), None)
        image_id = claimed if claimed is not None else parsed.image_id or image_id_from_digest(photo.payload_sha256)
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
        accepted_id = image_id if valid_id else image_id_from_digest(photo.payload_sha256)
        request = PhotoRequest(site, device, accepted_id, photo.payload)
        job = _Job(request, reply_topic, photo.correlation_data, photo)
        if not valid_id:
            detail = f"the {IMAGE_ID_PROPERTY} user property must be 1..64 characters of [A-Za-z0-9._-]"
            self._reply(job, self._judge.error(request, Reason.BAD_IMAGE_ID, detail))
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            retry = self._config.processing.busy_retry_after_ms
            self._reply(job, self._judge.error(request, Reason.BUSY, "the gateway is busy", retry_after_ms=retry))

    def _abandon(self) -> None:
        """A photo taken on but not judged before the grace ended: unacknowledged, so the broker redelivers it."""
        with self._settled:
            self._unacked -= 1
            self._settled.notify_all()

    def _work(self) -> None:
        """Judge photos from the queue; beat the watchdog heartbeat while idle and after each photo. Once stopping,
        finish what the queue holds and leave; once halted (the grace is over), take nothing more."""
        worker = threading.current_thread().name
        while True:
            self._notifier.beat(worker)
            try:
                job = self._queue.get(timeout=0.1 if self._stopping.is_set() else self._notifier.heartbeat_s)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                continue
            if job is None:
                break
            if self._halted.is_set():
                self._abandon()
                break
            try:
                self._answer(job)
            except Exception:  # a worker must outlive any one photo
                log.exception("worker_failed", image_id=job.request.image_id)
                self._metrics.error("worker_failed")
                self._reply(job, self._judge.error(job.request, Reason.INTERNAL, "the gateway failed on this photo"))
        self._notifier.forget(worker)

    def _answer(self, job: _Job) -> None:
        """Judge a photo once: a photo already answered gets its stored verdict, one being judged waits for it."""
        request = job.request
        key = PhotoKey(request.site, request.device, request.image_id, job.photo.payload_sha256)
        with self._in_flight_lock:
            stored = self._store.get(key)
            if stored is None:
                if key in self._in_flight:
                    self._in_flight[key].append(job)
                    return
                self._in_flight[key] = [job]
        if stored is not None:
            self._send(job, stored, duplicate=True)
            return
        try:
            judged = self._judge.judge(request)
            verdict = judged.verdict
            answer = StoredVerdict(verdict.to_json(), judged.recapture.to_json() if judged.recapture else None)
            if not _TRANSIENT.intersection(verdict.reasons):
                self._store.put(key, answer.verdict, answer.recapture)  # before publishing: it survives a crash
        finally:
            with self._in_flight_lock:
                jobs = self._in_flight.pop(key)
        for n, each in enumerate(jobs):
            self._send(each, answer, duplicate=n > 0)
        self._log(job, verdict)

    def _send(self, job: _Job, answer: StoredVerdict, duplicate: bool) -> None:
        """Publish the verdict (and recapture request); acknowledge the photo once the broker has both."""
        done = self._ack_after(job.photo, 2 if answer.recapture else 1)
        self._transport.publish(Outgoing(job.reply_topic, answer.verdict, correlation_data=job.correlation_data), done)
        if answer.recapture is not None:
            topic = self._topics.recapture(job.request.site, job.request.device)
            expiry = self._config.policy.recapture_expiry_s
            self._transport.publish(Outgoing(topic, answer.recapture, expiry_s=expiry), done)
        if duplicate:
            request = job.request
            log.info("verdict_repeated", site=request.site, device=request.device, image_id=request.image_id)

    def _reply(self, job: _Job, verdict: VerdictMessage) -> None:
        """An error verdict decided without judging (busy, bad image id, internal): not stored."""
        self._send(job, StoredVerdict(verdict.to_json(), None), duplicate=False)
        self._log(job, verdict)

    def _ack_after(self, photo: IncomingPhoto, deliveries: int) -> Callable[[], None]:
        remaining = [deliveries]

        def delivered() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._acknowledge(photo)

        return delivered

    def _acknowledge(self, photo: IncomingPhoto) -> None:
        self._transport.ack(photo)
        with self._settled:
            self._unacked -= 1
            self._settled.notify_all()

    def _log(self, job: _Job, verdict: VerdictMessage) -> None:
        self._metrics.verdict(verdict)
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
