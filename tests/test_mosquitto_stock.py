"""The shipped broker config where the README puts it: config/mosquitto/clinic.conf in conf.d/ under the
distribution's own stock /etc/mosquitto/mosquitto.conf, with every directive as shipped.

The clinic box's file system is mirrored under a temporary root: every absolute path in both files moves under it,
and the listeners move to free ports; nothing else changes. The one line added is ``user`` (the test's own user),
so that a test run as root does not drop to the ``mosquitto`` user, which cannot read the temporary folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import free_port
from tests.test_broker_security import GATEWAY, PASSWORDS, SHIPPED_CONF, _wait_listening, shipped_files

STOCK = Path("/etc/mosquitto/mosquitto.conf")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def move_paths(text: str, root: Path, ports: dict[str, int] | None = None) -> str:
    """Every absolute path under ``root``, every listener on its port from ``ports``; the rest unchanged."""
    out = []
    for line in text.splitlines():
        words = line.split(" ")
        if not line.startswith("#") and len(words) > 1:
            if words[0] == "listener" and ports is not None:
                words[1] = str(ports[words[1]])
            words = [f"{root}{w}" if w.startswith("/") else w for w in words]
        out.append(" ".join(words))
    return "\n".join(out) + "\n"


def connack(port: int, username: str | None, password: str | None, ca: Path | None = None) -> int:
    """Connect and return the CONNACK reason code (0: accepted)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username or "", protocol=mqtt.MQTTv5)
    got: list[int] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        got.append(int(reason.value))
        done.set()

    client.on_connect = on_connect
    client.reconnect_delay_set(60, 120)
    if username is not None:
        client.username_pw_set(username, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), f"no CONNACK on port {port}"
        return got[0]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def stock_broker(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int], subprocess.Popen[bytes]]]:
    root, ports, process = start_stock_broker(tmp_path)
    try:
        yield root, ports, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_stock_broker(tmp_path: Path) -> tuple[Path, dict[str, int], subprocess.Popen[bytes]]:
    """The README's step 1 under a temporary root: the root, the listeners' ports (by shipped port) and the
    broker process (the caller stops it). Accounts: ``PASSWORDS``."""
    if not STOCK.is_file():
        pytest.fail(f"{STOCK} is missing: install the distribution's mosquitto package (scripts/bootstrap.sh does)")
    root = tmp_path / "root"
    etc = root / "etc" / "mosquitto"
    (etc / "conf.d").mkdir(parents=True)
    for folder in ("run/mosquitto", "var/lib/mosquitto", "var/log/mosquitto"):
        (root / folder).mkdir(parents=True)
    # the README's step 1: the config into conf.d/, the ACL beside the stock file, certificates and accounts
    files = shipped_files(tmp_path / "made")
    for shipped_path, made in files.paths.items():
        (root / shipped_path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(made, root / shipped_path.lstrip("/"))
    ports = {"1883": free_port(), "8883": free_port(), "8884": free_port()}
    user = pwd.getpwuid(os.getuid()).pw_name
    (etc / "mosquitto.conf").write_text(f"user {user}\n" + move_paths(STOCK.read_text(), root))
    (etc / "conf.d" / "colposcopy.conf").write_text(move_paths(SHIPPED_CONF.read_text(), root, ports))
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(etc / "mosquitto.conf")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while process.poll() is None and time.monotonic() < deadline and not all(map(listening, ports.values())):
        time.sleep(0.1)
    if process.poll() is not None:
        stderr = process.stderr.read().decode() if process.stderr else ""
        pytest.fail(f"mosquitto exited at start: {stderr}")
    try:
        for port in ports.values():
            _wait_listening(port)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return root, ports, process


def test_shipped_config_runs_under_the_stock_mosquitto_conf(
    stock_broker: tuple[Path, dict[str, int], subprocess.Popen[bytes]],
) -> None:
    root, ports, process = stock_broker
    ca = root / "etc/mosquitto/certs/ca.crt"
    assert connack(ports["1883"], GATEWAY, PASSWORDS[GATEWAY]) == 0
    assert connack(ports["1883"], None, None) == 0x87  # no anonymous access: the drop-in's settings apply
    assert connack(ports["8883"], "clinic-a/eva-07", PASSWORDS["clinic-a/eva-07"], ca) == 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    # the stock file's settings apply too: its persistence_location, pid_file and log file
    assert (root / "var/lib/mosquitto/mosquitto.db").is_file()
    log = (root / "var/log/mosquitto/mosquitto.log").read_text()
    assert "as colposcopy-gateway" in log and "Error" not in log, log
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert f"Loading config file {root}/etc/mosquitto/conf.d/colposcopy.conf" in stderr, stderr
    assert "Error" not in stderr, stderr
