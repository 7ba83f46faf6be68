"""Fixtures: a real Mosquitto on a free loopback port per test, and MQTT helpers that record what came back."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

DEV_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cervix-dev"


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test (and each gateway process it starts) gets its own state folder, so its verdict store."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def _ephemeral_ports() -> range:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


_PORTS = random.Random()


def free_port() -> int:
    """A free loopback port outside the kernel's ephemeral range.

    A port from that range can be taken between this check and the broker's bind by any outgoing connection, and
    a client retrying a connect to an ephemeral port where nothing listens can connect to itself (TCP simultaneous
    open): CI saw Mosquitto fail with "Address already in use" on a port the gateway had been retrying.
    """
    ephemeral = _ephemeral_ports()
    outside = [p for p in (range(10000, ephemeral.start), range(ephemeral.stop, 65536)) if len(p)]
    if not outside:  # the whole range is ephemeral: let the kernel choose
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    while True:
        port = _PORTS.choice(_PORTS.choice(outside))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class Broker:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_mosquitto(workdir: Path, extra: str = "", port: int | None = None, *, defaults: bool = True) -> Broker:
    """Start a private Mosquitto; ``extra`` is appended to its config (listeners, ACLs, TLS...).

    ``defaults=False`` leaves out the default listener on ``port`` and ``allow_anonymous true``: ``extra`` then
    is the whole configuration and must open a listener on 127.0.0.1:``port`` (which start-up waits for).
    """
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: run the README's test command, which installs it")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        + (f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n" if defaults else "")
        + f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n" + extra
    )
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            log = workdir / "mosquitto.log"  # where its errors go ("Address already in use")
            pytest.fail(f"mosquitto exited at start: {err} {log.read_text() if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Broker(port, workdir, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("mosquitto did not start listening within 10 s")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_mosquitto(tmp_path / "broker")
    yield b
    b.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any


@dataclass
class Recorder:
    """An MQTT 5 client that records every message on its subscriptions, in arrival order."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, topic_prefix: str = "", timeout: float = 15.0) -> list[Received]:
        """Wait until ``count`` messages whose topic starts with ``topic_prefix`` have arrived; return them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [m for m in self.messages if m.topic.startswith(topic_prefix)]
                if len(got) >= count or time.monotonic() >= deadline:
                    return got
                self.cond.wait(max(0.0, deadline - time.monotonic()))

    def publish(self, topic: str, payload: bytes, properties: Any = None, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, properties=properties).wait_for_publish(5)


def make_recorder(broker: Broker, subscriptions: list[str], client_id: str = "recorder") -> Recorder:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    recorder = Recorder(client)
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with recorder.cond:
            recorder.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.properties))
            recorder.cond.notify_all()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.subscribe([(t, 1) for t in subscriptions])
    client.loop_start()
    assert subscribed.wait(5), "recorder could not subscribe"
    return recorder


@pytest.fixture
def recorder(broker: Broker) -> Iterator[Recorder]:
    r = make_recorder(broker, ["colposcopy/#"])
    yield r
    r.client.disconnect()
    r.client.loop_stop()
