"""Running under systemd: the unit verifies, and the notify protocol (READY, STATUS, WATCHDOG) over a real socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import allocator
from gateway.assessment import CervixFinding
from gateway.backends.base import Backend
from gateway.config import parse_config
from gateway.judge import build_judge
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from gateway.systemd import Notifier, watchdog_interval
from tests.conftest import Broker, Recorder, free_port, start_mosquitto

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "colposcopy-gateway.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    """``systemd-analyze verify`` fails when ExecStart's binary is missing: point a copy at one that exists."""
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.fail("systemd-analyze is not installed: scripts/bootstrap.sh installs the systemd package")
    executable = Path(sys.executable).parent / "colpo-gateway"
    assert executable.exists(), "the package is not installed in this venv"
    text = UNIT.read_text().replace("/opt/colposcopy-gateway/venv/bin/colpo-gateway", str(executable))
    assert text != UNIT.read_text()
    copy = tmp_path / "colposcopy-gateway.service"
    copy.write_text(text)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result


def test_unit_is_notify_with_watchdog_restart_and_hardening() -> None:
    unit = unit_settings()
    for key, value in {
        "Type": "notify",
        "Restart": "on-failure",
        "User": "colposcopy",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "colposcopy-gateway",
        "CacheDirectory": "colposcopy-gateway",
        "LoadCredential": "mqtt-password:/etc/colposcopy-gateway/mqtt-password",
    }.items():
        assert unit.get(key) == [value], key
    assert int(unit["WatchdogSec"][0]) >= 10
    assert "PrivateDevices" not in unit  # it would hide the GPU
    environment = " ".join(unit["Environment"]).split()  # gateway/allocator.py says why
    assert f"LD_PRELOAD={allocator.JEMALLOC}" in environment and f"MALLOC_CONF={allocator.MALLOC_CONF}" in environment
    assert unit["ExecStart"][0].split()[1:] == ["run", "--config", "/etc/colposcopy-gateway/gateway.yaml"]


@pytest.mark.parametrize("preload", ["libjemalloc.so.2", ""])
def test_the_units_preload_gives_jemalloc(preload: str) -> None:
    """What the unit's LD_PRELOAD does to a Python process here: jemalloc when set (bootstrap installs it)."""
    assert allocator.jemalloc_installed(), "scripts/bootstrap.sh installs libjemalloc2"
    result = subprocess.run(
        [sys.executable, "-c", "from gateway import allocator; print(allocator.active())"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "LD_PRELOAD": preload}, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("jemalloc" if preload else "glibc")


def test_install_script_dry_run_lists_the_steps() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), "--dry-run", "--no-start"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "/opt/colposcopy-gateway/venv" in out and "/etc/colposcopy-gateway/gateway.yaml" in out
    assert "install -m 0644 systemd/colposcopy-gateway.service /etc/systemd/system/" in out
    assert "enable --now" not in out


def test_watchdog_interval_follows_systemd_rules() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None  # meant for another process
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_s is None  # no NOTIFY_SOCKET: nothing to send to


# ------------------------------------------------------------------------------------------ the notify socket


class NotifySocket:
    """A datagram socket bound where $NOTIFY_SOCKET points, recording each message's fields."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="sd-")  # short: AF_UNIX paths are limited to 107 bytes
        self.path = os.path.join(self.folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self.cond = threading.Condition()
        self._closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.cond:
                self.messages.append((time.monotonic(), data.decode().split("\n")))
                self.cond.notify_all()

    def fields(self, since: float = 0.0) -> list[str]:
        with self.cond:
            return [field for at, fields in self.messages if at >= since for field in fields]

    def wait_for(self, found: Callable[[list[str]], bool], timeout: float = 15.0, since: float = 0.0) -> list[str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not found(fields := self.fields(since)):
                if time.monotonic() >= deadline:
                    raise AssertionError(f"not received within {timeout} s; got {fields}")
                self.cond.wait(max(0.0, deadline - time.monotonic()))
        return fields

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    s = NotifySocket()
    yield s
    s.close()


def has(prefix: str, count: int = 1) -> Callable[[list[str]], bool]:
    return lambda fields: sum(f.startswith(prefix) for f in fields) >= count


def photo_props(image_id: str) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("image-id", image_id)]
    return p


def test_run_under_a_notify_socket_reports_ready_status_and_watchdog(
    broker: Broker, recorder: Recorder, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """``colpo-gateway run`` as systemd starts it: NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (its own pid)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway_id: gw-notify\nbackend: classical\nbroker: {{url: '{broker.url}'}}\nprocessing: {{workers: 2}}\n"
        f"store: {{path: '{tmp_path / 'verdicts.sqlite3'}'}}\nmetrics: {{port: 0}}\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"}
    command = f'export WATCHDOG_PID=$$; exec "{sys.executable}" -m gateway run --config "{config}"'
    process = subprocess.Popen(["sh", "-c", command], env=env, cwd=REPO)
    try:
        fields = notify_socket.wait_for(has("WATCHDOG=1", 2), timeout=30)
        ready = fields.index("READY=1")
        assert fields[0] == "STATUS=loading the backend"
        assert fields.index("WATCHDOG=1") > ready  # pings only once ready
        assert "STATUS=serving: classical, 0 photos judged" in fields[ready:]
        jpeg = encode_jpeg(render(SceneSpec(width=640, height=480, seed=1)).image)
        recorder.publish("colposcopy/s/d/images", jpeg, photo_props("p1"))
        assert recorder.wait_for(1, "colposcopy/s/d/verdicts")
        notify_socket.wait_for(lambda f: "STATUS=serving: classical, 1 photos judged" in f)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        fields = notify_socket.fields()
        assert "STOPPING=1" in fields and fields[-1].startswith("STATUS=stopping")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class BlockingDetector:
    """Locates nothing until released: a pipeline whose backend hangs on a photo."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def locate(self, image: np.ndarray) -> CervixFinding:
        self.entered.set()
        self.release.wait(30)
        return CervixFinding(found=False, box=None, score=0.0)


def test_watchdog_pings_stop_while_a_worker_is_stuck_on_a_photo(
    broker: Broker, recorder: Recorder, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = parse_config(
        "",
        "<test>",
        {
            "gateway_id": "gw-stall",
            "backend": "classical",
            "broker": {"url": broker.url},
            "processing": {"workers": 1},
            "store": {"path": str(tmp_path / "verdicts.sqlite3")},
            "metrics": {"enabled": False},
        },
    )
    judge = build_judge(config)
    classical = judge.pipeline.backend
    detector = BlockingDetector()
    judge.pipeline.slot.swap(Backend("blocking", {"blocking": "0"}, detector, classical.focus), "test")
    env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    service = GatewayService(config, judge, notifier=Notifier(env))
    service.start()
    try:
        notify_socket.wait_for(has("WATCHDOG=1", 3))  # idle and healthy: pings every 0.5 s
        jpeg = encode_jpeg(render(SceneSpec(width=640, height=480, seed=1)).image)
        recorder.publish("colposcopy/s/d/images", jpeg, photo_props("x"))
        assert detector.entered.wait(10)
        stuck = time.monotonic()
        notify_socket.wait_for(has("STATUS=stalled: worker-0"), since=stuck, timeout=5)
        stalled_at = time.monotonic()
        time.sleep(1.6)  # three ping periods
        assert notify_socket.fields(since=stalled_at).count("WATCHDOG=1") == 0
        detector.release.set()
        released = time.monotonic()
        fields = notify_socket.wait_for(has("WATCHDOG=1"), since=released, timeout=5)
        assert any(f.startswith("STATUS=serving: blocking") for f in fields)
        assert recorder.wait_for(1, "colposcopy/s/d/verdicts")
    finally:
        detector.release.set()
        service.stop()


def test_ready_without_a_broker_then_waiting_for_it_with_the_watchdog_going(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """The broker starts later than the gateway (or lives on a box that boots later): READY=1 once the config and
    the backend are loaded, WATCHDOG=1 while it reconnects, STATUS= and /readyz say what it waits for and why;
    once the broker is there, the gateway serves."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway_id: gw-early\nbackend: classical\nbroker: {{url: 'mqtt://127.0.0.1:{port}'}}\n"
        f"store: {{path: '{tmp_path / 'verdicts.sqlite3'}'}}\nmetrics: {{port: 0}}\nlogging: {{format: json}}\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"}
    command = f'export WATCHDOG_PID=$$; exec "{sys.executable}" -m gateway run --config "{config}"'
    log = tmp_path / "gateway.log"
    started = time.monotonic()
    with log.open("wb") as err:
        process = subprocess.Popen(["sh", "-c", command], env=env, cwd=REPO, stderr=err)
    broker = None
    try:
        notify_socket.wait_for(has("READY=1"), timeout=10)
        assert time.monotonic() - started < 10
        waiting = f"STATUS=waiting for broker at mqtt://127.0.0.1:{port} (last attempt: refused: nothing listens"
        notify_socket.wait_for(lambda f: any(x.startswith(waiting) for x in f), timeout=15)
        pinging = time.monotonic()
        time.sleep(3)
        assert notify_socket.fields(since=pinging).count("WATCHDOG=1") >= 4  # every 0.5 s, broker or not
        metrics_port = next(
            int(e["url"].rsplit(":", 1)[1].split("/")[0]) for e in _events(log) if e["event"] == "metrics_serving"
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5)
        assert answer.value.code == 503
        assert answer.value.read().decode().startswith(waiting.removeprefix("STATUS="))
        broker = start_mosquitto(tmp_path / "broker", port=port)
        notify_socket.wait_for(lambda f: "STATUS=serving: classical, 0 photos judged" in f, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if broker is not None:
            broker.stop()
    failures = [e for e in _events(log) if e["event"] == "broker_connect_failed"]
    assert failures and failures[0]["cause"] == "refused" and failures[0]["broker"] == f"mqtt://127.0.0.1:{port}"
    assert [e["event"] for e in _events(log)].count("broker_connect_recovered") == 1


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("broker: {url: 'mqtt://127.0.0.1:1'}\nbroker: {username: gw}\n", "gateway.yaml:2: broker: duplicate key"),
        ("broker: {url: 'mqtts://127.0.0.1:1', ca_file: /nonexistent/ca.crt}\n", "gateway.yaml:1: broker.ca_file:"),
    ],
)
def test_a_config_error_at_start_exits_with_a_status_systemd_does_not_retry(
    tmp_path: Path, text: str, named: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert str(result.returncode) in unit_settings()["RestartPreventExitStatus"][0].split(), result
    assert named in result.stderr
