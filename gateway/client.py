"""Device-side client: ``submit(jpeg) -> VerdictMessage`` over MQTT 5 request/response.

Each request carries an ``image-id`` user property, a Response Topic in the device's own namespace and a
Correlation Data value that the gateway echoes. As the contract asks of every device: a ``busy`` answer is sent
again after its ``retry_after_ms`` (an answer, not a failed attempt), and a photo with no answer within
``RESEND_AFTER_S`` is sent again, same image id and bytes (the gateway's verdict store answers it once).

    with GatewayClient("mqtts://gateway.local:8883", site="clinic-a", device="eva-07", username="clinic-a/eva-07",
                       password=password, ca_file="/etc/ssl/clinic-ca.crt") as client:
        verdict = client.submit(jpeg_bytes)
        if verdict.verdict == "recapture":
            show(verdict.reasons)

On the shipped broker config (docs/security.md) a device connects over TLS: to 8883 with its username
``<site>/<device>`` and password, or to 8884 with a client certificate whose CN is ``<site>/<device>``
(``cert_file``, ``key_file``; a PEM that holds both may be given as ``cert_file`` alone). ``ca_file`` is the clinic
CA that signed the broker's certificate (default: the system store).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.protocol import RecaptureMessage, Topics, VerdictMessage, derive_image_id

RESEND_AFTER_S = 30.0
"""The contract's resend time: a device sends a photo again when no answer came within this (README, Delivery)."""


class SubmitTimeout(TimeoutError):
    """No verdict arrived in time, after all retries."""


class GatewayClient:
    def __init__(
        self,
        broker_url: str,
        site: str,
        device: str,
        prefix: str = "colposcopy",
        username: str | None = None,
        password: str | None = None,
        on_recapture: Callable[[RecaptureMessage], None] | None = None,
        connect_timeout_s: float = 10.0,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        self.site, self.device = site, device
        self._topics = Topics(prefix)
        self._reply_topic = f"{self._topics.device_namespace(site, device)}replies/{uuid.uuid4().hex[:12]}"
        self._on_recapture = on_recapture
        self._pending: dict[bytes, tuple[threading.Event, list[VerdictMessage]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        url = urlsplit(broker_url)
        tls = url.scheme == "mqtts"
        if not tls and (ca_file or cert_file or key_file):
            raise ValueError(f"CA, certificate and key files need an mqtts:// broker URL, not {broker_url}")
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=MQTTProtocolVersion.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls:
            self._client.tls_set(
                ca_certs=str(ca_file) if ca_file else None,
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
            )
        self._client.on_connect = self._handle_connect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe
        self._client.connect(url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883), keepalive=30)
        self._client.loop_start()
        if not self._ready.wait(connect_timeout_s):
            self.close()
            raise ConnectionError(f"no connection to {broker_url} within {connect_timeout_s} s")

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def submit(
        self,
        photo: bytes,
        image_id: str | None = None,
        timeout_s: float = RESEND_AFTER_S,
        retries: int = 2,
        deadline_s: float | None = None,
    ) -> VerdictMessage:
        """Send one photo and wait for its verdict; raises SubmitTimeout when none comes.

        An attempt that gets no answer within ``timeout_s`` is sent again, at most ``retries`` times. A ``busy``
        answer (``retry_after_ms``) is waited out and sent again without using up a retry, until ``deadline_s``
        (default: ``(retries + 1) * timeout_s``) after the call, which bounds the whole call."""
        image_id = image_id or derive_image_id(photo)
        deadline = time.monotonic() + (deadline_s if deadline_s is not None else (retries + 1) * timeout_s)
        unanswered = busy = 0
        while (left := deadline - time.monotonic()) > 0:
            verdict = self._request(photo, image_id, min(timeout_s, left))
            if verdict is None:
                unanswered += 1
                if unanswered > retries:
                    break
                continue
            if verdict.retry_after_ms is None:
                return verdict
            busy += 1
            wait = verdict.retry_after_ms / 1000
            if time.monotonic() + wait >= deadline:
                break
            time.sleep(wait)
        raise SubmitTimeout(f"no verdict for {image_id}: {unanswered} attempts unanswered, {busy} answered busy")

    def _request(self, photo: bytes, image_id: str, timeout_s: float) -> VerdictMessage | None:
        correlation = uuid.uuid4().bytes
        done = threading.Event()
        box: list[VerdictMessage] = []
        with self._lock:
            self._pending[correlation] = (done, box)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("image-id", image_id)]
        props.ResponseTopic = self._reply_topic
        props.CorrelationData = correlation
        props.ContentType = "image/jpeg" if photo[:2] == b"\xff\xd8" else "image/png"
        try:
            self._client.publish(self._topics.images(self.site, self.device), photo, qos=1, properties=props)
            done.wait(timeout_s)
        finally:
            with self._lock:
                self._pending.pop(correlation, None)
        return box[0] if box else None

    def _handle_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(self._reply_topic, 1), (self._topics.recapture(self.site, self.device), 1)])

    def _handle_subscribe(self, _client: mqtt.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        self._ready.set()

    def _handle_message(self, _client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._reply_topic:
            correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
            with self._lock:
                waiter = self._pending.get(bytes(correlation)) if correlation else None
            if waiter is not None:
                waiter[1].append(VerdictMessage.model_validate_json(msg.payload))
                waiter[0].set()
        elif self._on_recapture is not None:
            self._on_recapture(RecaptureMessage.model_validate_json(msg.payload))
