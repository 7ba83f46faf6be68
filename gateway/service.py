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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import structlog

from gateway import __version__
from gateway.backends.slot import BackendSlot
from gateway.config import GatewayConfig
from gateway.fair_queue import FairQueue
from gateway.judge import Judge, PhotoRequest
from gateway.metrics import Metrics
from gateway.protocol import (
    IMAGE_ID_PROPERTY,
    Reason,
    StatusMessage,
    TopicError,
    Topics,
    VerdictMessage,
    resolve_image_id,
    utc_timestamp,
)
from gateway.store import PhotoKey, StoredVerdict, VerdictStore
from gateway.systemd import Notifier
from gateway.transport import IncomingPhoto, MqttTransport, Outgoing, maximum_packet_size

log = structlog.get_logger(__name__)

STATUS_EXPIRY_INTERVALS = 3
"""The retained status expires after this many ``broker.status_interval_s`` without a republish."""
FINAL_PUBLISH_S = 2.0
"""On stop, after the grace: how long the offline status may take to reach the broker."""
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of messages it dropped since it started because a client's queue was full
(max_queued_bytes / max_queued_messages): after their PUBACK, so the devices were never told."""


#: Reasons whose verdicts are not stored: a later delivery of the same photo deserves a fresh try.
_TRANSIENT = frozenset({Reason.BUSY, Reason.INTERNAL})


POISON_AFTER_CRASHES = 2
"""A photo the gateway died judging this many times is answered ``poison`` instead of being judged again."""


class _Turns:
    """Photos are judged side by side, except a suspect (one being judged when the gateway died), which is judged
    alone: if it kills the gateway again, no other photo was in progress to be blamed with it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._side_by_side = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def turn(self, alone: bool) -> Iterator[None]:
        with self._cond:
            if alone:
                self._waiting_alone += 1
                self._cond.wait_for(lambda: not self._alone and self._side_by_side == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                self._cond.wait_for(lambda: not self._alone and self._waiting_alone == 0)
                self._side_by_side += 1
        try:
            yield
        finally:
            with self._cond:
                if alone:
                    self._alone = False
                else:
                    self._side_by_side -= 1
                self._cond.notify_all()


@dataclass(frozen=True)
class _Job:
    request: PhotoRequest
    reply_topic: str
    correlation_data: bytes | None
    photo: IncomingPhoto


def _device(job: _Job) -> tuple[str, str]:
    """Whose share of the queue a photo takes."""
    return job.request.site, job.request.device


def _open_store(config: GatewayConfig) -> VerdictStore:
    """The configured store (in memory, reported as a fault, while its file cannot be opened)."""
    settings = config.store
    return VerdictStore(
        settings.resolved_path(), settings.max_age_s, settings.max_entries, settings.max_entries_per_device
    )


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
        judge.policy.keep_runs_in(self._store)
        self._topics = Topics(config.topic_prefix)
        processing = config.processing
        self._queue: FairQueue[_Job] = FairQueue(processing.queue_size, _device)
        self._workers = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(processing.worker_count())
        ]
        self._in_flight: dict[PhotoKey, list[_Job]] = {}
        """Photos being judged, with the duplicates that arrived meanwhile (they get the same verdict)."""
        self._in_flight_lock = threading.Lock()
        self._turns = _Turns()
        self._store_fault: str | None = None
        """The store's fault as last announced in the status."""
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
            on_connect_failure=lambda failure: self._metrics.connect_failure(failure.cause),
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
            return self._waiting()
        return None

    def _waiting(self) -> str:
        failure = self._transport.last_failure
        last = f" (last attempt: {failure.describe()})" if failure is not None else ""
        return f"waiting for broker at {self._config.broker.url}{last}"

    def _describe(self) -> str:
        """The STATUS= line systemd shows."""
        if not self._transport.connected.is_set():
            return self._waiting()
        slot = self._judge.pipeline.slot
        degraded = f" (degraded: {slot.reason})" if slot.state == "degraded" else ""
        if self._store.fault is not None:
            degraded += f" (degraded: {self._store.fault})"
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
        self._notifier.start(self._describe)  # READY=1 now: config and backend are loaded, whatever the broker
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
        for _ in self._workers:  # a stop marker each, taken once the waiting photos are: never blocks
            self._queue.put(None)
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
        self._judge.pipeline.slot.close()  # cancels an engine build, closes the runtimes
        log.info("gateway_stopped", gateway_id=self._config.gateway_id, unanswered=0 if settled else self._unacked)

    def _status(self, state: Literal["online", "offline", "degraded"]) -> Outgoing:
        slot = self._judge.pipeline.slot
        backend = slot.current
        why = [slot.reason] if slot.state == "degraded" else []
        if state != "offline" and self._store.fault is not None:
            state, why = "degraded", [*why, self._store.fault]
        message = StatusMessage(
            gateway_id=self._config.gateway_id,
            state=state,
            version=__version__,
            backend=backend.name,
            models=dict(backend.models),
            since=self._since,
            detail="; ".join(why) if state == "degraded" else None,
        )
        expiry = STATUS_EXPIRY_INTERVALS * self._config.broker.status_interval_s
        return Outgoing(self._status_topic, message.to_json(), retain=True, expiry_s=expiry)

    def _announce(self) -> None:
        """Publish the availability status (online or degraded): on every (re)connect, and on a change or the
        heartbeat while connected (``_announce_if_connected``)."""
        self._transport.publish(self._status(self._judge.pipeline.slot.state))

    def _announce_if_connected(self) -> None:
        if self._transport.connected.is_set():
            self._announce()

    def _beat_status(self) -> None:
        """Republish the status every ``broker.status_interval_s`` while connected, renewing its expiry."""
        interval = self._config.broker.status_interval_s
        while not self._stopping.wait(interval):
            self._announce_if_connected()

    def _backend_changed(self, slot: BackendSlot) -> None:
        """A background TensorRT build finished or failed: republish the status (if offline, the next
        connect announces it anyway)."""
        self._metrics.backend(slot)
        self._announce_if_connected()

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
        image_id, bad_id = resolve_image_id(parsed, claimed, photo.payload_sha256)
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
        request = PhotoRequest(site, device, image_id, photo.payload)
        job = _Job(request, reply_topic, photo.correlation_data, photo)
        if bad_id is not None:
            self._reply(job, self._judge.error(request, Reason.BAD_IMAGE_ID, bad_id))
            return
        retry = self._config.processing.busy_retry_after_ms
        for refused in self._queue.admit(job):  # this photo, or another device's over its fair share
            busy = self._judge.error(refused.request, Reason.BUSY, "the gateway is busy", retry_after_ms=retry)
            self._reply(refused, busy)

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
                self._watch_store(idle=True)
                continue
            if job is None:
                break
            if self._halted.is_set():
                self._abandon()
                break
            try:
                self._answer(job)
            except Exception:  # a worker must outlive any one photo (_answer has answered it)
                log.exception("worker_failed", image_id=job.request.image_id)
                self._metrics.error("worker_failed")
            self._watch_store(idle=False)
        self._notifier.forget(worker)

    def _answer(self, job: _Job) -> None:
        """Judge a photo once: a photo already answered gets its stored verdict, one being judged waits for it.

        Whatever happens, every job taken here (the photo and the duplicates that waited on it) is answered and so
        acknowledged: the store is only a cache, and a photo never answered holds a Receive Maximum slot forever.
        """
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
            self._settle([job], stored, repeated=True)
            return
        verdict: VerdictMessage | None = None
        answer: StoredVerdict | None = None
        try:
            crashes = self._store.begin(key)  # left marked if this process dies judging it
            if crashes >= POISON_AFTER_CRASHES:
                log.error("poison_photo", site=request.site, device=request.device, image_id=request.image_id)
                detail = f"the gateway died judging this photo {crashes} times: it is not judged again"
                verdict, recapture = self._judge.error(request, Reason.POISON, detail), None
            else:
                with self._turns.turn(alone=crashes > 0):
                    judged = self._judge.judge(request)
                verdict, recapture = judged.verdict, judged.recapture
            answer = StoredVerdict(verdict.to_json(), recapture.to_json() if recapture else None)
            if not _TRANSIENT.intersection(verdict.reasons):
                self._store.put(key, answer.verdict, answer.recapture)  # before publishing: it survives a crash
        finally:
            self._store.finish(key)
            with self._in_flight_lock:
                jobs = self._in_flight.pop(key)
            if verdict is None or answer is None:  # the exception goes on to _work, which logs it
                verdict = self._judge.error(request, Reason.INTERNAL, "the gateway failed on this photo")
                answer = StoredVerdict(verdict.to_json(), None)
            self._settle(jobs, answer, repeated=False)
            self._log(job, verdict)

    def _settle(self, jobs: list[_Job], answer: StoredVerdict, repeated: bool) -> None:
        """Send ``answer`` to each job (all but the first are duplicates, the first too when ``repeated``); one that
        cannot be published is acknowledged anyway (logged), so that it does not hold a Receive Maximum slot."""
        for n, job in enumerate(jobs):
            try:
                self._send(job, answer, duplicate=repeated or n > 0)
            except Exception:
                log.exception("verdict_not_published", image_id=job.request.image_id)
                self._acknowledge(job.photo)

    def _watch_store(self, idle: bool) -> None:
        """Republish the status when the verdict store fails or recovers; while idle and failing, probe it."""
        if idle and self._store.fault is not None:
            self._store.probe()
        fault = self._store.fault
        with self._in_flight_lock:
            if fault == self._store_fault:
                return
            self._store_fault = fault
        if fault is not None:
            log.warning("status_degraded", detail=fault)
        self._announce_if_connected()

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
        """An error verdict decided without judging (busy, bad image id): not stored."""
        self._settle([job], StoredVerdict(verdict.to_json(), None), repeated=False)
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
