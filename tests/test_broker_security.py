"""Hostile devices against the Mosquitto configuration we ship (config/mosquitto/clinic.conf + colposcopy.acl).

One real Mosquitto per module runs the shipped clinic.conf with only ports and file paths substituted, and the
shipped ACL file itself: TLS listeners with certificates made here, a password file made with mosquitto_passwd.
Every case asserts, message by message, what reached whom. Device identity: username ``<site>/<device>``
(password listener) or client-certificate CN ``<site>/<device>`` (mutual-TLS listener); see docs/security.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.client import GatewayClient
from gateway.config import GatewayConfig, parse_config
from gateway.judge import build_judge
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from tests.certs import CertificateAuthority, Issued
from tests.conftest import Broker, free_port, start_mosquitto

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONF = REPO / "config" / "mosquitto" / "clinic.conf"
SHIPPED_ACL = REPO / "config" / "mosquitto" / "colposcopy.acl"
CA_PATH = "/etc/mosquitto/certs/ca.crt"

GATEWAY = "colposcopy-gateway"
A = "clinic-a/eva-07"  # the hostile device
B = "clinic-a/eva-08"  # another device of the same site
C = "clinic-b/eva-07"  # same device name, another site
MONITOR = "colposcopy-monitor"  # the read-only monitoring account (the README's status check)
PASSWORDS = {A: "pw-a-7f3e", B: "pw-b-91c2", C: "pw-c-0d4a", GATEWAY: "pw-gw-5b8e", MONITOR: "pw-mon-3a61"}

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
REFUSED = (BAD_CREDENTIALS, NOT_AUTHORIZED)


# ----------------------------------------------------------------------------------------------- the broker


@dataclass
class SecureBroker:
    broker: Broker
    plain_port: int
    tls_port: int
    mtls_port: int
    ca: CertificateAuthority
    rogue_ca: CertificateAuthority
    certs: dict[str, Issued]
    """Client certificates by CN, all issued by ``ca``; ``rogue:<CN>`` ones by ``rogue_ca``."""
    gateway_password_file: Path

    def log(self) -> str:
        return (self.broker.workdir / "mosquitto.log").read_text(errors="replace")


def render_shipped_config(
    ports: dict[str, int], paths: dict[str, Path], persistence_location: Path | None, *, syslog: bool = False
) -> str:
    """clinic.conf with its listener ports and file paths substituted, nothing else changed (syslog off unless
    ``syslog``). Standalone, ``persistence_location`` is added, as the file's header says; under the stock
    mosquitto.conf (None) that file sets it."""
    out: list[str] = []
    seen: set[str] = set()
    for line in SHIPPED_CONF.read_text().splitlines():
        key, _, value = line.partition(" ")
        if line.startswith("#") or not line.strip():
            out.append(line)
        elif key == "listener":
            port, _, _bind = value.partition(" ")
            out.append(f"listener {ports[port]} 127.0.0.1")  # KeyError: a listener this test does not know
            seen.add(port)
        elif key in ("cafile", "certfile", "keyfile", "password_file", "acl_file"):
            out.append(f"{key} {paths[value]}")
            seen.add(value)
        elif line == "log_dest syslog" and not syslog:
            continue
        else:
            out.append(line)
    assert seen == set(ports) | set(paths), f"the shipped config no longer uses {set(ports) | set(paths) - seen}"
    if persistence_location is not None:
        out.append(f"persistence_location {persistence_location}/")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class ShippedFiles:
    """What docs/security.md has a clinic make for the shipped config: a CA, the broker's certificate and key, a
    password file with every account of ``PASSWORDS``; ``paths`` maps clinic.conf's paths to them."""

    ca: CertificateAuthority
    paths: dict[str, Path]
    gateway_password_file: Path


def shipped_files(work: Path) -> ShippedFiles:
    ca = CertificateAuthority.create(work / "pki", "clinic-ca")
    server = ca.issue("broker", "localhost", server=True)
    passwd = work / "passwd"
    passwd.touch()
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for user, password in PASSWORDS.items():
        subprocess.run([binary, "-b", str(passwd), user, password], check=True, capture_output=True, timeout=30)
    gateway_password_file = work / "gateway-password"
    gateway_password_file.write_text(PASSWORDS[GATEWAY] + "\n")
    paths = {
        "/etc/mosquitto/certs/ca.crt": ca.cert,
        "/etc/mosquitto/certs/broker.crt": server.cert,
        "/etc/mosquitto/certs/broker.key": server.key,
        "/etc/mosquitto/passwd": passwd,
        "/etc/mosquitto/colposcopy.acl": SHIPPED_ACL,
    }
    return ShippedFiles(ca, paths, gateway_password_file)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    work = tmp_path_factory.mktemp("secure-broker")
    files = shipped_files(work)
    ca = files.ca
    rogue = CertificateAuthority.create(work / "rogue", "rogue-ca")
    certs = {cn: ca.issue(f"client-{n}", cn) for n, cn in enumerate((A, B, C, GATEWAY))}
    certs[f"rogue:{B}"] = rogue.issue("rogue-b", B)
    (work / "data").mkdir()

    plain, tls, mtls = free_port(), free_port(), free_port()
    conf = render_shipped_config({"1883": plain, "8883": tls, "8884": mtls}, files.paths, work / "data")
    broker = start_mosquitto(work / "broker", conf, port=plain, defaults=False)
    for port in (tls, mtls):  # start_mosquitto waited for the first listener only
        _wait_listening(port)
    yield SecureBroker(broker, plain, tls, mtls, ca, rogue, certs, files.gateway_password_file)
    broker.stop()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"mosquitto is not listening on {port}")


# ----------------------------------------------------------------------------------------------- clients


@dataclass
class Got:
    topic: str
    payload: bytes
    properties: Any


@dataclass
class Client:
    """An MQTT client that records the CONNACK, every SUBACK and PUBACK reason code and every message."""

    client: mqtt.Client
    connack: ReasonCode | None = None
    disconnected: bool = False
    messages: list[Got] = field(default_factory=list)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def _wait(self, ready: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK reason codes (1 = granted QoS 1, 0x87 = not authorized)."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert self._wait(lambda: mid in self.subacks, 5), f"no SUBACK for {topic}"
        return [code.value for code in self.subacks[mid]]

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 = success, 0x87 = not authorized)."""
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        assert self._wait(lambda: info.mid in self.pubacks, 5), f"no PUBACK for {topic}"
        return int(self.pubacks[info.mid].value)

    def wait_for(self, count: int, topic_prefix: str = "", timeout: float = 10.0) -> list[Got]:
        self._wait(lambda: len([m for m in self.messages if m.topic.startswith(topic_prefix)]) >= count, timeout)
        with self.cond:
            return [m for m in self.messages if m.topic.startswith(topic_prefix)]

    def topics(self) -> list[str]:
        with self.cond:
            return [m.topic for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connect(secure: SecureBroker) -> Iterator[Any]:
    """``connect(port, username=..., password=..., ...) -> Client`` (closed after the test)."""
    opened: list[Client] = []

    def _connect(
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        tls: bool = False,
        ca: Path | None = None,
        cert: Issued | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        expect_connected: bool = True,
    ) -> Client:
        paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        rec = Client(paho)

        def on_connect(_c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            with rec.cond:
                rec.connack = reason
                rec.cond.notify_all()

        def on_disconnect(_c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
            with rec.cond:
                rec.disconnected = True
                rec.cond.notify_all()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with rec.cond:
                rec.messages.append(Got(msg.topic, bytes(msg.payload), msg.properties))
                rec.cond.notify_all()

        def on_subscribe(_c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
            with rec.cond:
                rec.subacks[mid] = list(codes)
                rec.cond.notify_all()

        def on_publish(_c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            with rec.cond:
                rec.pubacks[mid] = reason
                rec.cond.notify_all()

        paho.on_connect, paho.on_disconnect, paho.on_message = on_connect, on_disconnect, on_message
        paho.on_subscribe, paho.on_publish = on_subscribe, on_publish
        paho.reconnect_delay_set(60, 120)  # a refused client must not quietly try again during the test
        if username is not None:
            paho.username_pw_set(username, password)
        if tls or ca or cert:
            paho.tls_set(
                ca_certs=str(ca or secure.ca.cert),
                certfile=str(cert.cert) if cert else None,
                keyfile=str(cert.key) if cert else None,
            )
        paho.connect("127.0.0.1", port)  # TLS: the handshake (server certificate check) happens here
        paho.loop_start()
        opened.append(rec)
        rec._wait(lambda: rec.connack is not None or rec.disconnected, 5)
        if expect_connected:
            assert rec.connack is not None and not rec.connack.is_failure, f"not connected: {rec.connack}"
        return rec

    yield _connect
    for rec in opened:
        rec.close()


def device(connect: Any, secure: SecureBroker, user: str, **kwargs: Any) -> Client:
    """A device on the TLS + password listener."""
    return connect(secure.tls_port, username=user, password=PASSWORDS[user], tls=True, **kwargs)


def gateway_account(connect: Any, secure: SecureBroker) -> Client:
    """The gateway's account on the loopback listener, watching every image topic."""
    gw = connect(secure.plain_port, username=GATEWAY, password=PASSWORDS[GATEWAY], client_id="watcher")
    assert gw.subscribe("colposcopy/+/+/images") == [1]
    assert gw.subscribe("colposcopy/+/+/images/+") == [1]
    return gw


def ns(user: str) -> str:
    return f"colposcopy/{user}/"


def props(image_id: str, response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("image-id", image_id)]
    if response_topic is not None:
        p.ResponseTopic = response_topic
    if correlation is not None:
        p.CorrelationData = correlation
    return p


# ----------------------------------------------------------------------------------------------- authentication


def test_anonymous_connections_are_refused_on_every_listener(secure: SecureBroker, connect: Any) -> None:
    plain = connect(secure.plain_port, expect_connected=False)
    tls = connect(secure.tls_port, tls=True, expect_connected=False)
    for rec in (plain, tls):
        assert rec.connack is not None and rec.connack.value == NOT_AUTHORIZED, rec.connack
    mtls = connect(secure.mtls_port, tls=True, expect_connected=False)  # no client certificate
    assert mtls.connack is None or mtls.connack.is_failure


def test_wrong_or_borrowed_passwords_are_refused(secure: SecureBroker, connect: Any) -> None:
    cases = [
        (A, "wrong"),
        (A, PASSWORDS[B]),  # a site-mate's password
        (C, PASSWORDS[A]),  # A claims the other site with its own password
        ("clinic-b/eva-99", PASSWORDS[A]),  # an account that does not exist
        (GATEWAY, PASSWORDS[A]),  # A claims the gateway account
    ]
    for user, password in cases:
        for port, tls in ((secure.tls_port, True), (secure.plain_port, False)):
            rec = connect(port, username=user, password=password, tls=tls, expect_connected=False)
            # Mosquitto 2.0 answers 0x87 "not authorized"; 0x86 "bad user name or password" is as good
            assert rec.connack is not None and rec.connack.value in REFUSED, (user, port, rec.connack)
            assert not rec.messages


def test_client_refuses_a_server_its_ca_did_not_sign(secure: SecureBroker, connect: Any) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(secure.tls_port, username=A, password=PASSWORDS[A], ca=secure.rogue_ca.cert)
    with pytest.raises(ssl.SSLCertVerificationError):  # the system store does not know the clinic CA either
        paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        paho.tls_set()
        paho.connect("127.0.0.1", secure.tls_port)


def test_broker_refuses_a_client_certificate_from_another_ca(secure: SecureBroker, connect: Any) -> None:
    try:
        rec = connect(secure.mtls_port, cert=secure.certs[f"rogue:{B}"], expect_connected=False)
    except (ssl.SSLError, OSError):
        return  # refused during the handshake (TLS 1.2)
    assert rec.connack is None or rec.connack.is_failure  # TLS 1.3: refused right after the client's Finished


# ----------------------------------------------------------------------------------------------- authorisation


def test_device_cannot_read_another_devices_verdicts(secure: SecureBroker, connect: Any) -> None:
    a = device(connect, secure, A)
    b = device(connect, secure, B)
    assert b.subscribe(ns(B) + "verdicts") == [1]
    assert b.subscribe(ns(B) + "recapture") == [1]
    assert b.subscribe(ns(B) + "replies/#") == [1]
    hostile = [ns(B) + "verdicts", ns(B) + "recapture", ns(B) + "replies/#", "colposcopy/clinic-a/+/verdicts"]
    hostile += ["colposcopy/#", "#", "colposcopy/+/+/images", "$share/g/colposcopy/+/+/verdicts"]
    codes = {topic: a.subscribe(topic) for topic in hostile}
    # Mosquitto 2.0 grants every subscription and filters each message on delivery; later versions may refuse
    # the subscription itself with 0x87. Either way nothing of B's may arrive.
    assert all(code in ([1], [NOT_AUTHORIZED]) for code in codes.values()), codes

    gw = connect(secure.plain_port, username=GATEWAY, password=PASSWORDS[GATEWAY])
    for leaf in ("verdicts", "recapture", "replies/r1"):
        assert gw.publish(ns(B) + leaf, b'{"for": "B"}') == 0
    assert gw.publish(ns(A) + "verdicts", b'{"for": "A"}') == 0  # the marker: sent after B's three

    assert [m.topic for m in b.wait_for(3)] == [ns(B) + "verdicts", ns(B) + "recapture", ns(B) + "replies/r1"]
    got = a.wait_for(1, ns(A) + "verdicts")
    assert got and all(m.payload == b'{"for": "A"}' for m in got)
    assert set(a.topics()) == {ns(A) + "verdicts"}, a.topics()  # (copies: one per matching subscription)


def test_device_cannot_publish_as_another_device_or_site(secure: SecureBroker, connect: Any) -> None:
    gw = gateway_account(connect, secure)
    a = device(connect, secure, A)
    forged = [
        ns(B) + "images",  # a site-mate
        ns(B) + "images/IMG-1",  # a site-mate, MQTT 3.1.1 form
        ns(C) + "images",  # the same device name at another site
        "colposcopy/clinic-b/eva-08/images",
        ns(B) + "verdicts",  # a fake verdict for B
        ns(A) + "verdicts",  # a fake verdict for itself (only the gateway writes verdicts)
        ns(B) + "replies/x",
        "colposcopy/gateways/gw-1/status",  # fake gateway availability
        "colposcopy/clinic-a/images",
        "other/topic",
    ]
    for topic in forged:
        assert a.publish(topic, b"forged " + topic.encode()) == NOT_AUTHORIZED, topic
    assert a.publish(ns(A) + "images", b"own photo") == 0
    assert a.publish(ns(A) + "images/IMG-2", b"own photo 3.1.1") == 0
    got = gw.wait_for(2)
    assert [(m.topic, m.payload) for m in got] == [
        (ns(A) + "images", b"own photo"),
        (ns(A) + "images/IMG-2", b"own photo 3.1.1"),
    ]


def test_mqtt311_device_is_held_to_the_same_rules(secure: SecureBroker, connect: Any) -> None:
    """MQTT 3.1.1 has no PUBACK reason codes: a denied publish is acknowledged and silently dropped."""
    gw = gateway_account(connect, secure)
    a = device(connect, secure, A, protocol=mqtt.MQTTv311)
    a.publish(ns(B) + "images/IMG-9", b"forged")
    a.publish(ns(A) + "images/IMG-10", b"own")
    assert [(m.topic, m.payload) for m in gw.wait_for(1)] == [(ns(A) + "images/IMG-10", b"own")]
    time.sleep(0.2)
    assert gw.topics() == [ns(A) + "images/IMG-10"]


def test_client_id_cannot_take_over_another_devices_session(secure: SecureBroker, connect: Any) -> None:
    b = device(connect, secure, B, client_id="eva-08")
    assert b.subscribe(ns(B) + "verdicts") == [1]
    a = device(connect, secure, A, client_id=B)  # B's identity as client id: replaced by A's own username
    assert a.publish(ns(B) + "images", b"x") == NOT_AUTHORIZED
    a2 = device(connect, secure, A, client_id="eva-08")  # B's chosen client id: replaced as well
    # both of A's connections got A's username as client id, so a2 took over a's own session; B kept its own
    assert a._wait(lambda: a.disconnected, 5)
    assert not b.disconnected and not a2.disconnected
    gw = connect(secure.plain_port, username=GATEWAY, password=PASSWORDS[GATEWAY])
    assert gw.publish(ns(B) + "verdicts", b"still B's") == 0
    assert [m.payload for m in b.wait_for(1)] == [b"still B's"]


def test_devices_read_gateway_status_but_cannot_write_it(secure: SecureBroker, connect: Any) -> None:
    gw = connect(secure.plain_port, username=GATEWAY, password=PASSWORDS[GATEWAY])
    status = b'{"state": "online"}'
    gw.client.publish("colposcopy/gateways/gw-status-test/status", status, qos=1, retain=True).wait_for_publish(5)
    a = device(connect, secure, A)
    assert a.publish("colposcopy/gateways/gw-status-test/status", b'{"state": "offline"}') == NOT_AUTHORIZED
    assert a.subscribe("colposcopy/gateways/+/status") == [1]
    got = a.wait_for(1, "colposcopy/gateways/gw-status-test/status")
    assert [m.payload for m in got] == [status]
    gw.client.publish("colposcopy/gateways/gw-status-test/status", b"", qos=1, retain=True).wait_for_publish(5)


def test_only_the_gateway_reads_the_brokers_dropped_counter_and_no_other_sys_topic(
    secure: SecureBroker, connect: Any
) -> None:
    dropped = "$SYS/broker/publish/messages/dropped"
    gw = connect(secure.plain_port, username=GATEWAY, password=PASSWORDS[GATEWAY])
    assert gw.subscribe(dropped) == [1]
    assert [m.payload.isdigit() for m in gw.wait_for(1, dropped)] == [True]  # retained: the count so far
    gw.subscribe("$SYS/#")  # refused, or granted and filtered per message: either way nothing else arrives
    gw.subscribe("$SYS/broker/clients/connected")
    time.sleep(1.5)
    assert set(gw.topics()) == {dropped}
    a = device(connect, secure, A)
    a.subscribe(dropped)  # granted (Mosquitto checks reads per message), but the retained count never arrives
    a.subscribe("$SYS/#")
    assert a.publish(dropped, b"0") == NOT_AUTHORIZED
    time.sleep(1.5)
    assert a.topics() == []


def test_monitor_reads_the_gateways_status_and_nothing_else(secure: SecureBroker, connect: Any) -> None:
    gw = gateway_account(connect, secure)  # watches every image topic
    status_topic, status = "colposcopy/gateways/gw-monitor-test/status", b'{"state": "online"}'
    gw.client.publish(status_topic, status, qos=1, retain=True).wait_for_publish(5)
    monitor = connect(secure.tls_port, username=MONITOR, password=PASSWORDS[MONITOR], tls=True)
    snoop = ["#", "colposcopy/#", "colposcopy/+/+/images", "colposcopy/+/+/images/+", "colposcopy/+/+/verdicts"]
    snoop += ["colposcopy/+/+/recapture", "colposcopy/+/+/replies/#", "$share/m/colposcopy/+/+/images", "$SYS/#"]
    snoop += [f"colposcopy/{MONITOR}/#"]
    codes = {topic: monitor.subscribe(topic) for topic in snoop}
    assert all(code in ([1], [NOT_AUTHORIZED]) for code in codes.values()), codes  # 2.0: granted, then filtered
    assert monitor.subscribe("colposcopy/gateways/+/status") == [1]
    assert {m.payload for m in monitor.wait_for(1, status_topic)} == {status}  # the retained status

    forged = [ns(A) + "images", ns(A) + "images/IMG-m", ns(A) + "verdicts", ns(A) + "replies/r", status_topic]
    # what the device patterns would grant this username; .../images/images is a photo topic of "device" images
    forged += [f"colposcopy/{MONITOR}/images", f"colposcopy/{MONITOR}/images/images", f"colposcopy/{MONITOR}/x"]
    forged += ["$SYS/broker/publish/messages/dropped", "other/topic"]
    for topic in forged:
        assert monitor.publish(topic, b"from the monitor") == NOT_AUTHORIZED, topic

    a = device(connect, secure, A)
    assert a.publish(ns(A) + "images", b"a photo") == 0
    for leaf in ("verdicts", "recapture", "replies/r1"):
        assert gw.publish(ns(A) + leaf, b'{"for": "A"}') == 0
    marker = b'{"state": "degraded"}'  # sent after everything else
    gw.client.publish(status_topic, marker, qos=1, retain=True).wait_for_publish(5)
    assert monitor._wait(lambda: any(m.payload == marker for m in monitor.messages), 10)
    time.sleep(0.3)
    statuses = re.compile(r"colposcopy/gateways/[^/]+/status")  # (other tests' gateways may have left theirs)
    assert all(statuses.fullmatch(topic) for topic in monitor.topics()), monitor.topics()
    assert {m.payload for m in monitor.messages if m.topic == status_topic} == {status, marker}
    assert [(m.topic, m.payload) for m in gw.wait_for(1)] == [(ns(A) + "images", b"a photo")]  # no forged photo
    gw.client.publish(status_topic, b"", qos=1, retain=True).wait_for_publish(5)


def test_the_documented_device_servers_are_the_shipped_device_listeners() -> None:
    """AsyncAPI's servers and the README's device section name exactly clinic.conf's listeners off loopback."""
    listeners: dict[str, dict[str, str]] = {}  # port -> the listener's own lines (up to a blank line), and "bind"
    current: dict[str, str] | None = None
    for line in SHIPPED_CONF.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "listener":
            port, _, bind = value.partition(" ")
            current = listeners[port] = {"bind": bind}
        elif not line.strip():
            current = None
        elif current is not None and not line.startswith("#"):
            current[key] = value
    device_ports = {port for port, lines in listeners.items() if lines["bind"] not in ("127.0.0.1", "::1")}
    assert device_ports == {"8883", "8884"} and all("certfile" in listeners[port] for port in device_ports)

    doc = yaml.safe_load((REPO / "docs" / "asyncapi.yaml").read_text())
    servers = {server["host"].rpartition(":")[2]: server for server in doc["servers"].values()}
    assert set(servers) == device_ports, servers
    schemes = doc["components"]["securitySchemes"]
    for port, server in servers.items():
        assert server["protocol"] == "secure-mqtt", server
        [scheme] = [schemes[ref["$ref"].rpartition("/")[2]]["type"] for ref in server["security"]]
        assert scheme == ("X509" if listeners[port].get("require_certificate") == "true" else "userPassword")

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### For device-app developers") : readme.index("## Configuration")]
    urls = re.findall(r"\b(mqtts?)://[^:/\s\"]+:(\d+)", section)
    assert urls and all(scheme == "mqtts" and port in device_ports for scheme, port in urls), urls
    assert all(port in section for port in device_ports) and "1883" not in section


def readme_status_check(host: str, port: int, ca: Path, password: str) -> list[tuple[str, dict[str, Any]]]:
    """Run the README's check of deployment step 3 (mosquitto_sub as the monitoring account over TLS) against
    ``host:port`` with ``ca``: (topic, status) of every status it printed."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        pytest.fail("mosquitto_sub is not installed: the mosquitto-clients package (scripts/bootstrap.sh installs it)")
    readme = (REPO / "README.md").read_text().replace("\\\n", " ")
    commands = [line.strip() for line in readme.splitlines() if line.strip().startswith("mosquitto_sub ")]
    assert len(commands) == 1, f"the README has not one mosquitto_sub command line (a code block) but {commands}"
    command = commands[0]
    for shipped, here in (("-h gateway.local", f"-h {host}"), ("-p 8883", f"-p {port}"), (CA_PATH, str(ca))):
        assert command.count(shipped) == 1, f"the README's check no longer says {shipped!r}: {command}"
        command = command.replace(shipped, here)
    env = {**os.environ, "MONITOR_PASSWORD": password}
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode in (0, 27), result  # 27: -W's timeout, after printing what arrived
    lines = [line.partition(" ") for line in result.stdout.splitlines()]
    return [(topic, dict(json.loads(payload))) for topic, _, payload in lines]


def test_the_readmes_status_check_runs_as_the_monitor_over_tls(secure: SecureBroker, connect: Any) -> None:
    gw = connect(secure.plain_port, username=GATEWAY, password=PASSWORDS[GATEWAY])
    topic, status = "colposcopy/gateways/gw-readme/status", {"state": "online", "gateway_id": "gw-readme"}
    gw.client.publish(topic, json.dumps(status), qos=1, retain=True).wait_for_publish(5)
    try:
        printed = readme_status_check("127.0.0.1", secure.tls_port, secure.ca.cert, PASSWORDS[MONITOR])
        assert [got for at, got in printed if at == topic] == [status], printed
    finally:
        gw.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)


def test_mutual_tls_identity_is_the_certificate_cn(secure: SecureBroker, connect: Any) -> None:
    gw = gateway_account(connect, secure)
    # A presents its certificate and claims B's username and client id: the CN decides, not the claim
    a = connect(secure.mtls_port, cert=secure.certs[A], username=B, password=PASSWORDS[B], client_id=B)
    assert a.publish(ns(B) + "images", b"forged") == NOT_AUTHORIZED
    assert a.publish(ns(C) + "images", b"forged") == NOT_AUTHORIZED
    assert a.publish(ns(A) + "images", b"own, certificate") == 0
    assert [(m.topic, m.payload) for m in gw.wait_for(1)] == [(ns(A) + "images", b"own, certificate")]
    c = connect(secure.mtls_port, cert=secure.certs[C])
    assert c.publish(ns(A) + "images", b"forged") == NOT_AUTHORIZED
    assert c.publish(ns(C) + "images", b"own C") == 0
    assert [(m.topic, m.payload) for m in gw.wait_for(2)][1:] == [(ns(C) + "images", b"own C")]


# ----------------------------------------------------------------------------------------------- the real gateway


@pytest.fixture(scope="module")
def sharp_jpeg() -> bytes:
    return encode_jpeg(render(SceneSpec(width=1600, height=1200, seed=1)).image)


@pytest.fixture(scope="module")
def blurred_jpeg() -> bytes:
    return encode_jpeg(render(SceneSpec(width=1600, height=1200, blur="defocus", blur_px=9, seed=2)).image)


def run_gateway(broker: dict[str, Any], gateway_id: str) -> GatewayService:
    # its own share group and no lingering session: an earlier test's gateway, gone, must not take photos
    broker = {**broker, "share_group": f"g-{gateway_id}", "session_expiry_s": 0}
    sections = {"gateway_id": gateway_id, "broker": broker, "metrics": {"enabled": False}}
    config: GatewayConfig = parse_config("", "<test>", sections)
    service = GatewayService(config, build_judge(config))
    service.start()
    assert service.connected.wait(10), "gateway did not connect and subscribe through the ACL"
    return service


def body(message: Got) -> dict[str, Any]:
    return dict(json.loads(message.payload))


def test_gateway_does_not_aim_responses_at_another_device(
    secure: SecureBroker, connect: Any, sharp_jpeg: bytes, blurred_jpeg: bytes
) -> None:
    service = run_gateway(
        {
            "url": f"mqtt://127.0.0.1:{secure.plain_port}",
            "username": GATEWAY,
            "password_file": str(secure.gateway_password_file),
        },
        "gw-acl",
    )
    try:
        a = device(connect, secure, A)
        b = device(connect, secure, B)
        for rec, user in ((a, A), (b, B)):
            for leaf in ("verdicts", "recapture", "replies/#"):
                assert rec.subscribe(ns(user) + leaf) == [1]
        # A asks for its verdicts on B's topics, then on an images topic; then a proper request
        assert a.publish(ns(A) + "images", sharp_jpeg, props("p1", ns(B) + "replies/steal", b"c1")) == 0
        assert a.publish(ns(A) + "images", blurred_jpeg, props("p2", ns(B) + "verdicts", b"c2")) == 0
        assert a.publish(ns(A) + "images", sharp_jpeg, props("p3", ns(A) + "images", b"c3")) == 0
        assert a.publish(ns(A) + "images", sharp_jpeg, props("p4", ns(A) + "replies/r4", b"c4")) == 0

        verdicts = a.wait_for(3, ns(A) + "verdicts", timeout=30)
        assert sorted(body(m)["image_id"] for m in verdicts) == ["p1", "p2", "p3"]
        assert {body(m)["image_id"]: m.properties.CorrelationData for m in verdicts} == {
            "p1": b"c1",
            "p2": b"c2",
            "p3": b"c3",
        }
        assert all((body(m)["site"], body(m)["device"]) == ("clinic-a", "eva-07") for m in verdicts)
        [reply] = a.wait_for(1, ns(A) + "replies/r4")
        assert (body(reply)["image_id"], reply.properties.CorrelationData) == ("p4", b"c4")
        [recapture] = a.wait_for(1, ns(A) + "recapture")
        assert body(recapture)["image_id"] == "p2"
        assert body(next(m for m in verdicts if body(m)["image_id"] == "p2"))["verdict"] == "recapture"
        time.sleep(0.3)
        assert b.topics() == []  # nothing reached B
        assert sorted(a.topics()) == sorted([ns(A) + "verdicts"] * 3 + [ns(A) + "replies/r4", ns(A) + "recapture"])
    finally:
        service.stop()


def test_gateway_over_mqtts_with_ca_verification_answers_end_to_end(
    secure: SecureBroker, connect: Any, sharp_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("COLPO_GATEWAY_MQTT_PASSWORD", PASSWORDS[GATEWAY])
    service = run_gateway(
        {"url": f"mqtts://127.0.0.1:{secure.tls_port}", "username": GATEWAY, "ca_file": str(secure.ca.cert)},
        "gw-tls",
    )
    try:
        a = device(connect, secure, A)
        assert a.subscribe(ns(A) + "replies/#") == [1]
        assert a.publish(ns(A) + "images", sharp_jpeg, props("tls-1", ns(A) + "replies/t", b"\x00tls")) == 0
        [reply] = a.wait_for(1, ns(A) + "replies/t", timeout=30)
        verdict = body(reply)
        assert (verdict["image_id"], verdict["site"], verdict["device"]) == ("tls-1", "clinic-a", "eva-07")
        assert verdict["verdict"] == "accept", verdict
        assert reply.properties.CorrelationData == b"\x00tls"
    finally:
        service.stop()


def test_gateway_with_a_client_certificate_answers_a_certificate_device(
    secure: SecureBroker, connect: Any, sharp_jpeg: bytes
) -> None:
    cert = secure.certs[GATEWAY]
    service = run_gateway(
        {
            "url": f"mqtts://127.0.0.1:{secure.mtls_port}",
            "ca_file": str(secure.ca.cert),
            "cert_file": str(cert.cert),
            "key_file": str(cert.key),
        },
        "gw-mtls",
    )
    try:
        c = connect(secure.mtls_port, cert=secure.certs[C])
        assert c.subscribe(ns(C) + "verdicts") == [1]
        assert c.publish(ns(C) + "images", sharp_jpeg, props("cert-1")) == 0
        [message] = c.wait_for(1, ns(C) + "verdicts", timeout=30)
        assert (body(message)["image_id"], body(message)["site"]) == ("cert-1", "clinic-b")
    finally:
        service.stop()


# ------------------------------------------------------------------------------ device tools on the secured broker


@pytest.fixture
def gateway_on_loopback(secure: SecureBroker) -> Iterator[GatewayService]:
    """The gateway as the README deploys it: the plain loopback listener, with its account."""
    plain = {
        "url": f"mqtt://127.0.0.1:{secure.plain_port}",
        "username": GATEWAY,
        "password_file": str(secure.gateway_password_file),
    }
    service = run_gateway(plain, "gw-tools")
    yield service
    service.stop()


def test_gateway_client_with_password_and_ca_over_tls(
    secure: SecureBroker, gateway_on_loopback: GatewayService, sharp_jpeg: bytes
) -> None:
    url = f"mqtts://127.0.0.1:{secure.tls_port}"
    with GatewayClient(url, "clinic-a", "eva-07", username=A, password=PASSWORDS[A], ca_file=secure.ca.cert) as client:
        verdict = client.submit(sharp_jpeg, image_id="client-tls-1", timeout_s=30)
    assert (verdict.image_id, verdict.site, verdict.device, verdict.verdict) == (
        "client-tls-1",
        "clinic-a",
        "eva-07",
        "accept",
    )
    with pytest.raises(ssl.SSLCertVerificationError):  # the rogue CA did not sign the broker's certificate
        GatewayClient(url, "clinic-a", "eva-07", username=A, password=PASSWORDS[A], ca_file=secure.rogue_ca.cert)
    with pytest.raises(ValueError, match="mqtts://"):
        GatewayClient(f"mqtt://127.0.0.1:{secure.plain_port}", "clinic-a", "eva-07", ca_file=secure.ca.cert)


def test_gateway_client_with_a_client_certificate(
    secure: SecureBroker, gateway_on_loopback: GatewayService, sharp_jpeg: bytes, tmp_path: Path
) -> None:
    cert = secure.certs[B]
    url = f"mqtts://127.0.0.1:{secure.mtls_port}"
    with GatewayClient(
        url, "clinic-a", "eva-08", ca_file=secure.ca.cert, cert_file=cert.cert, key_file=cert.key
    ) as client:
        assert client.submit(sharp_jpeg, image_id="client-mtls-1", timeout_s=30).device == "eva-08"
    combined = tmp_path / "eva-08.pem"  # one PEM holding both the certificate and its key
    combined.write_text(cert.cert.read_text() + cert.key.read_text())
    with GatewayClient(url, "clinic-a", "eva-08", ca_file=secure.ca.cert, cert_file=combined) as client:
        assert client.submit(sharp_jpeg, image_id="client-mtls-2", timeout_s=30).image_id == "client-mtls-2"


def test_simulate_reaches_the_secured_broker_with_an_account_or_a_certificate(
    secure: SecureBroker, gateway_on_loopback: GatewayService, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORDS[C] + "\n")
    common = ["simulate", "--devices", "1", "--count", "2", "--rate", "0", "--size", "640x480", "--timeout", "30"]
    tls = [
        *common,
        *("--broker", f"mqtts://127.0.0.1:{secure.tls_port}", "--ca-file", str(secure.ca.cert)),
        *("--username", C, "--password-file", str(password)),
    ]
    cert = secure.certs[A]
    mtls = [
        *common,
        *("--broker", f"mqtts://127.0.0.1:{secure.mtls_port}", "--ca-file", str(secure.ca.cert)),
        *("--cert-file", str(cert.cert), "--key-file", str(cert.key), "--identity", A),
    ]
    for args, who in ((tls, "eva-07"), (mtls, "eva-07")):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "photos sent: 2, answered: 2, unanswered: 0" in result.stdout
        assert result.stdout.count(f"{who}  scene-") == 2, result.stdout
