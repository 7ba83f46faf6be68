"""The shipped clinic.conf under a burst: no photo is dropped by the broker after its PUBACK.

50 devices each send 3 photos of 12 MP at once (about 580 MB), while the gateway, as its own process, is restarted
5 times (SIGKILL and SIGTERM in turn). Devices answer `busy` as the contract says (send again after
`retry_after_ms`) but never resend a photo that got no answer: a photo the broker dropped stays unanswered, and the
test fails. With clinic.conf's former `max_queued_bytes 256 MiB`, which also counts the photos in flight to an
online gateway, about half of them were dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.client import GatewayClient, SubmitTimeout
from gateway.protocol import VerdictMessage
from gateway.scenes import SceneSpec, encode_jpeg, render
from tests.certs import CertificateAuthority
from tests.conftest import Broker, free_port, start_mosquitto
from tests.test_broker_security import GATEWAY, SHIPPED_ACL, render_shipped_config

REPO = Path(__file__).resolve().parents[1]
DEVICES = 50
PHOTOS_PER_DEVICE = 3
RESTARTS = 5
STATUS = "colposcopy/gateways/gw-q/status"


@pytest.fixture(scope="module")
def photo_12mp() -> bytes:
    """One 4000x3000 JPEG of about 3.9 MB (quality 95), sent under a fresh image id each time."""
    return encode_jpeg(render(SceneSpec(width=4000, height=3000, seed=7)).image, quality=95)


def device_name(n: int) -> str:
    return f"d{n:02d}"


@pytest.fixture
def shipped_broker(tmp_path: Path) -> Iterator[Broker]:
    """clinic.conf and colposcopy.acl as shipped, with only ports and paths moved into tmp_path."""
    ca = CertificateAuthority.create(tmp_path / "pki", "clinic-ca")
    server = ca.issue("broker", "localhost", server=True)
    passwd = tmp_path / "passwd"
    accounts = {GATEWAY: "pw-gateway", "s/watch": "pw-watch"}
    accounts |= {f"s/{device_name(n)}": f"pw-{n}" for n in range(DEVICES)}
    passwd.write_text("".join(f"{user}:{password}\n" for user, password in accounts.items()))
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([binary, "-U", str(passwd)], check=True, capture_output=True, timeout=60)  # hash in place
    (tmp_path / "data").mkdir()
    plain = free_port()
    conf = render_shipped_config(
        {"1883": plain, "8883": free_port(), "8884": free_port()},
        {
            "/etc/mosquitto/certs/ca.crt": ca.cert,
            "/etc/mosquitto/certs/broker.crt": server.cert,
            "/etc/mosquitto/certs/broker.key": server.key,
            "/etc/mosquitto/passwd": passwd,
            "/etc/mosquitto/colposcopy.acl": SHIPPED_ACL,
        },
        tmp_path / "data",  # standalone: clinic.conf leaves persistence_location to the stock mosquitto.conf
    )
    broker = start_mosquitto(tmp_path / "broker", conf, port=plain, defaults=False)
    yield broker
    broker.stop()


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # a file, not a pipe: a full pipe would stall the gateway
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def watch_status(broker: Broker) -> tuple[mqtt.Client, list[str], threading.Condition]:
    states: list[str] = []
    cond = threading.Condition()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch", protocol=mqtt.MQTTv5)
    client.username_pw_set("s/watch", "pw-watch")

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with cond:
            states.append(json.loads(msg.payload)["state"] if msg.payload else "gone")
            cond.notify_all()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(STATUS, qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client, states, cond


def test_a_burst_of_50_devices_through_5_gateway_restarts_loses_no_photo(
    tmp_path: Path, shipped_broker: Broker, photo_12mp: bytes
) -> None:
    password_file = tmp_path / "gateway-password"
    password_file.write_text("pw-gateway\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway_id: gw-q\nbackend: classical\nbroker:\n  url: {shipped_broker.url}\n  username: {GATEWAY}\n"
        f"  password_file: {password_file}\n  keepalive_s: 5\n"
        "processing:\n  workers: 1\n  shutdown_grace_s: 5\n  busy_retry_after_ms: 1000\n"
        f"store:\n  path: {tmp_path / 'verdicts.sqlite3'}\nmetrics:\n  port: 0\nlogging:\n  format: json\n"
    )
    gateway_log = tmp_path / "gateway.log"
    watcher, states, cond = watch_status(shipped_broker)
    gateway = start_gateway(config, gateway_log)
    clients: list[GatewayClient] = []
    verdicts: dict[str, VerdictMessage] = {}
    failures: dict[str, str] = {}
    lock = threading.Lock()

    def send(client: GatewayClient, image_id: str) -> None:
        try:
            # no resend of an unanswered photo (retries=0, a long timeout): only a busy answer is sent again
            verdict = client.submit(photo_12mp, image_id=image_id, timeout_s=300, retries=0, deadline_s=300)
        except SubmitTimeout as exc:
            with lock:
                failures[image_id] = str(exc)
            return
        with lock:
            verdicts[image_id] = verdict

    def answered() -> int:
        with lock:
            return len(verdicts)

    try:
        with cond:
            assert cond.wait_for(lambda: states[-1:] == ["online"], 30), f"gateway never online: {states}"
        for n in range(DEVICES):
            name = device_name(n)
            clients.append(GatewayClient(shipped_broker.url, "s", name, username=f"s/{name}", password=f"pw-{n}"))
        senders = [
            threading.Thread(target=send, args=(client, f"{client.device}-p{k}"), daemon=True)
            for client in clients
            for k in range(PHOTOS_PER_DEVICE)
        ]
        for sender in senders:
            sender.start()
        restarted_at: list[int] = []
        for restart in range(RESTARTS):
            progress = answered()
            deadline = time.monotonic() + 60
            while answered() < progress + 2 and time.monotonic() < deadline:  # the gateway is at work
                time.sleep(0.1)
            restarted_at.append(answered())
            gateway.send_signal(signal.SIGKILL if restart % 2 == 0 else signal.SIGTERM)
            gateway.wait(60)
            gateway = start_gateway(config, gateway_log)
        deadline = time.monotonic() + 300
        for sender in senders:
            sender.join(max(0.0, deadline - time.monotonic()))
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
        for client in clients:
            client.close()
        watcher.disconnect()
        watcher.loop_stop()

    sent = [f"{device_name(n)}-p{k}" for n in range(DEVICES) for k in range(PHOTOS_PER_DEVICE)]
    broker_log = (shipped_broker.workdir / "mosquitto.log").read_text(errors="replace")
    print(
        f"\n{len(sent)} photos of {len(photo_12mp) / 1e6:.1f} MB, restarts after {restarted_at} verdicts:"
        f" answered {len(verdicts)}, unanswered {len(sent) - len(verdicts)}"
    )
    assert restarted_at[-1] < len(sent), "every photo was answered before the last restart: not under load"
    assert not failures, f"{len(failures)} photos never answered, e.g. {sorted(failures.items())[:3]}"
    assert "Outgoing messages are being dropped" not in broker_log
    assert sorted(verdicts) == sorted(sent)
    for image_id, verdict in verdicts.items():
        assert (verdict.image_id, verdict.verdict) == (image_id, "accept"), verdict
