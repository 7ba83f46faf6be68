"""paho-mqtt (MQTT 5): connect with TLS and a last will, subscribe to the image topics, publish replies.

The network thread only hands each incoming photo to ``on_photo``, which must return at once; all work
happens elsewhere. paho's ``publish`` is thread-safe, so workers publish directly.

At-least-once: the session is persistent (stable client id, clean start off, a session expiry), incoming photos
are acknowledged by hand (``ack``), and ``publish`` can call back once the broker has acknowledged the message
(its PUBACK), so the service acknowledges a photo only after its verdict is safely with the broker. Messages
published while the broker is away stay in paho's queue and go out on reconnect.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import BrokerConfig
from gateway.connect_failures import ConnectFailure, FailureLog, from_connack, from_exception

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class IncomingPhoto:
    """An image message as received; the topic and properties are still untrusted device input."""

    topic: str
    payload: bytes
    user_properties: tuple[tuple[str, str], ...]
    response_topic: str | None
    correlation_data: bytes | None
    mid: int = 0
    """The packet id to acknowledge (``MqttTransport.ack``); 0 for QoS 0, which needs no acknowledgement."""
    qos: int = 0
    redelivered: bool = False
    """The broker's DUP flag: it sent this photo before (to this session) without getting an acknowledgement."""

    @cached_property
    def payload_sha256(self) -> str:
        """Hex SHA-256 of the payload, computed once (it names a photo sent without an id, and keys duplicates)."""
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    correlation_data: bytes | None = None
    expiry_s: int | None = None


def _publish_properties(message: Outgoing) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    if message.correlation_data is not None:
        props.CorrelationData = message.correlation_data
    if message.expiry_s is not None:
        props.MessageExpiryInterval = message.expiry_s
    return props


def _incoming(msg: mqtt.MQTTMessage) -> IncomingPhoto:
    props = getattr(msg, "properties", None)
    user = tuple((str(k), str(v)) for k, v in (getattr(props, "UserProperty", None) or []) if isinstance(k, str))
    response_topic = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    return IncomingPhoto(
        topic=msg.topic,
        payload=bytes(msg.payload),
        user_properties=user,
        response_topic=response_topic if isinstance(response_topic, str) else None,
        correlation_data=bytes(correlation) if isinstance(correlation, (bytes, bytearray)) else None,
        mid=msg.mid if msg.qos else 0,
        qos=msg.qos,
        redelivered=bool(msg.dup),
    )


def maximum_packet_size(max_payload_bytes: int) -> int:
    """The MQTT 5 Maximum Packet Size the gateway declares in CONNECT: the largest photo it judges plus room for the
    header, topic and properties (half the payload limit, at least 1 MiB). A photo a little over the limit still
    arrives and is answered ``too_large``; the broker never sends a larger one, so a broker without
    ``max_packet_size`` cannot make the gateway hold an arbitrarily large payload. With the default 16 MiB limit:
    24 MiB, which clinic.conf's ``max_packet_size`` matches (a broker that accepts larger photos discards them for
    the gateway unanswered)."""
    return min(max_payload_bytes + max(max_payload_bytes // 2, 1 << 20), 268_435_455)


def apply_credentials(client: mqtt.Client, broker: BrokerConfig) -> None:
    """Username/password and TLS (CA verification on, client certificate optional) from the broker config."""
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password())
    if broker.tls:
        client.tls_set(
            ca_certs=str(broker.ca_file) if broker.ca_file else None,
            certfile=str(broker.cert_file) if broker.cert_file else None,
            keyfile=str(broker.key_file) if broker.key_file else None,
        )


class MqttTransport:
    """One MQTT 5 connection: reconnects by itself, re-subscribes and calls ``on_connected`` each time."""

    def __init__(
        self,
        broker: BrokerConfig,
        subscriptions: tuple[str, ...],
        will: Outgoing,
        on_photo: Callable[[IncomingPhoto], None],
        on_connected: Callable[[], None],
        receive_maximum: int,
        maximum_packet_size: int,
        on_connect_failure: Callable[[ConnectFailure], None] | None = None,
        optional_subscriptions: tuple[str, ...] = (),
    ) -> None:
        """``maximum_packet_size`` goes into CONNECT: the broker never sends this gateway a larger packet (MQTT 5
        discards it for this client). ``optional_subscriptions`` may be refused (an ACL without them) and are then
        logged, not a reason to stay unready."""
        self._broker = broker
        self._subscriptions = subscriptions
        self._optional = optional_subscriptions
        self._maximum_packet_size = maximum_packet_size
        self._on_photo = on_photo
        self._on_connected = on_connected
        self._receive_maximum = receive_maximum
        self.connected = threading.Event()
        """Set once connected and subscribed: photos published from now on reach this gateway."""
        self._failures = FailureLog(broker.url, on_connect_failure)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=broker.client_id or "",
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain, properties=_publish_properties(will))
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        apply_credentials(client, broker)
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        self._client = client
        self._delivery_lock = threading.Lock()
        self._on_delivered: dict[int, Callable[[], None] | None] = {}
        self._delivered_early: set[int] = set()

    @property
    def last_failure(self) -> ConnectFailure | None:
        """Why the latest connection attempt failed; None once connected."""
        return self._failures.last

    def start(self) -> None:
        """Connect in the background; failures are retried with backoff, never raised."""
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self._receive_maximum
        props.MaximumPacketSize = self._maximum_packet_size
        props.SessionExpiryInterval = self._broker.session_expiry_s
        self._client.connect_async(
            self._broker.host,
            self._broker.port,
            keepalive=self._broker.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def publish(self, message: Outgoing, on_delivered: Callable[[], None] | None = None) -> mqtt.MQTTMessageInfo:
        """Publish at QoS 1 (queued while the broker is away); ``on_delivered`` runs on the network thread once the
        broker has acknowledged it."""
        info = self._client.publish(
            message.topic,
            message.payload,
            qos=1,
            retain=message.retain,
            properties=_publish_properties(message),
        )
        # The PUBACK can arrive before this thread gets here: _handle_publish then leaves the mid in
        # _delivered_early. Every publish goes through here, so every such mid is claimed at once.
        with self._delivery_lock:
            early = info.mid in self._delivered_early
            if early:
                self._delivered_early.discard(info.mid)
            else:
                self._on_delivered[info.mid] = on_delivered
        if early and on_delivered is not None:
            on_delivered()
        return info

    def ack(self, photo: IncomingPhoto) -> None:
        """Acknowledge a photo (PUBACK): the broker forgets it. Unacknowledged photos come again after a reconnect."""
        if photo.qos:
            self._client.ack(photo.mid, photo.qos)

    def unsubscribe(self, topics: tuple[str, ...], timeout_s: float = 2.0) -> bool:
        """Unsubscribe and wait for the broker's UNSUBACK; False if not connected or no answer in time."""
        if not self.connected.is_set():
            return False
        done = threading.Event()
        self._client.on_unsubscribe = lambda *_: done.set()
        self._client.unsubscribe(list(topics))
        return done.wait(timeout_s)

    def stop(self, last: Outgoing | None = None, timeout_s: float = 5.0) -> None:
        """Publish ``last`` (the offline status) if connected, then disconnect and stop the network thread."""
        if last is not None and self.connected.is_set():
            info = self.publish(last)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                log.warning("final_publish_failed", topic=last.topic)
        self._client.disconnect()
        self._client.loop_stop()

    def _handle_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._failures.failed(from_connack(reason, self._broker))
            return
        self._failures.connected()
        client.subscribe([(topic, 1) for topic in (*self._subscriptions, *self._optional)])
        log.info("broker_connected", broker=self._broker.url)
        self._on_connected()

    def _handle_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, codes: Any, _props: Any) -> None:
        required = len(self._subscriptions)
        refused = [str(code) for code in codes[:required] if code.is_failure]
        if refused:
            log.error("subscription_refused", subscriptions=list(self._subscriptions), reasons=refused)
            return
        for topic, code in zip(self._optional, codes[required:], strict=False):
            if code.is_failure:
                log.warning("optional_subscription_refused", subscription=topic, reason=str(code))
        self.connected.set()
        log.info("subscribed", subscriptions=list(self._subscriptions))

    def _handle_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("publish_refused", mid=mid, reason=str(reason))
        with self._delivery_lock:
            if mid not in self._on_delivered:
                self._delivered_early.add(mid)
                return
            callback = self._on_delivered.pop(mid)
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("delivery_callback_failed", mid=mid)

    def _handle_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        """The TCP connect or TLS handshake failed: paho calls this inside its ``except OSError``."""
        self._failures.failed(from_exception(sys.exc_info()[1], self._broker))

    def _handle_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.connected.is_set():  # a refused CONNECT also ends here: FailureLog has logged that
            log.warning("broker_disconnected", broker=self._broker.url, reason=str(reason))
        self.connected.clear()

    def _handle_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_photo(_incoming(msg))
        except Exception:  # the network thread must survive anything a device sends
            log.exception("message_handling_failed", topic=msg.topic)
