"""The README's deployment steps, scripted, with the processes started directly instead of by systemd.

1. Broker: the distribution's stock mosquitto.conf with config/mosquitto/clinic.conf in conf.d/, the ACL, the
   broker's certificate and the accounts (tests/test_mosquitto_stock.py: the clinic box mirrored under a
   temporary root, listeners on free ports).
2. Gateway: scripts/install.sh (a --root, stand-ins for systemctl, useradd and pip; tests/test_install.py), which
   enables but does not start the unconfigured service; then the edits the README asks for (broker.url,
   gateway_id, broker.username, the password file), ``config validate``.
3. Check: ``doctor`` and the gateway as the unit runs them (its credential, state and cache folders and
   environment), ``/readyz``, the retained status with the README's mosquitto_sub command (the monitoring
   account, over TLS), and verdicts for a device with ``simulate`` over TLS. It ends with the gateway reporting
   ``online`` on the secured broker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.test_broker_security import GATEWAY, MONITOR, PASSWORDS, readme_status_check
from tests.test_install import CONFIG, make_machine
from tests.test_mosquitto_stock import start_stock_broker
from tests.test_systemd import unit_settings

DEVICE = "clinic-a/eva-07"


def edit(text: str, line_start: str, new_line: str) -> str:
    """Replace the one line that starts with ``line_start`` (as an installer edits the YAML by hand)."""
    pattern = re.compile(rf"^{re.escape(line_start)}.*$", re.MULTILINE)
    assert len(pattern.findall(text)) == 1, f"not exactly one line starts with {line_start!r}"
    return pattern.sub(new_line, text)


def ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def status_as_the_monitor(tls_port: int, ca: Path) -> dict[str, Any]:
    """The README's check: its mosquitto_sub command, as the monitoring account over TLS, prints the status."""
    printed = readme_status_check("127.0.0.1", tls_port, ca, PASSWORDS[MONITOR])
    [status] = [got for topic, got in printed if topic == "colposcopy/gateways/gw-clinic-a/status"]
    return status


def test_the_readme_deployment_steps_end_with_an_online_gateway_on_the_secured_broker(tmp_path: Path) -> None:
    # 1. the broker
    box, ports, broker = start_stock_broker(tmp_path / "box")
    gateway: subprocess.Popen[bytes] | None = None
    try:
        ca = box / "etc/mosquitto/certs/ca.crt"
        # 2. the gateway: install.sh on a fresh box enables it, does not start it, and says what to do next
        machine = make_machine(tmp_path / "install")
        installed = machine.install()
        assert installed.returncode == 0, installed.stderr
        assert "NOT started" in installed.stdout and machine.systemctl()[-1] == "enable colposcopy-gateway"
        config = machine.root / CONFIG
        etc = config.parent
        text = config.read_text()
        text = edit(text, "gateway_id:", "gateway_id: gw-clinic-a")
        text = edit(text, "  url: mqtt://127.0.0.1:1883", f"  url: mqtt://127.0.0.1:{ports['1883']}")
        text = edit(text, "  username: null", f"  username: {GATEWAY}")
        installed_manifest = machine.root / "opt/colposcopy-gateway/engines/manifest.yaml"  # the staging root's
        text = edit(
            text, "  manifest: /opt/colposcopy-gateway/engines/manifest.yaml", f"  manifest: {installed_manifest}"
        )
        metrics_port = free_port()  # not 9464: other tests may run beside this one
        text = edit(text, "  port: 9464", f"  port: {metrics_port}")
        config.write_text(text)
        (etc / "mqtt-password").write_text(PASSWORDS[GATEWAY] + "\n")
        colpo = machine.root / "opt/colposcopy-gateway/venv/bin/colpo-gateway"
        validated = subprocess.run([str(colpo), "config", "validate", str(config)], capture_output=True, text=True)
        assert validated.returncode == 0 and "valid" in validated.stdout and "warning" not in validated.stdout, (
            validated
        )

        # 3. as the unit runs it: LoadCredential=, StateDirectory=, CacheDirectory=, Environment=
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        shutil.copy(etc / "mqtt-password", credentials / "mqtt-password")
        env = {
            **os.environ,
            "CREDENTIALS_DIRECTORY": str(credentials),
            "STATE_DIRECTORY": str(tmp_path / "state"),
            "CACHE_DIRECTORY": str(tmp_path / "cache"),
        }
        env.pop("COLPO_GATEWAY_MQTT_PASSWORD", None)
        for assignment in " ".join(unit_settings()["Environment"]).split():
            key, _, value = assignment.partition("=")
            env[key] = value
        (tmp_path / "state").mkdir()
        (tmp_path / "cache").mkdir()
        doctor = subprocess.run(
            [str(colpo), "doctor", "--config", str(config)], capture_output=True, text=True, timeout=300, env=env
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "password found (systemd credential mqtt-password)" in doctor.stdout
        assert "reachable: CONNACK Success" in doctor.stdout and doctor.stdout.rstrip().endswith("OK")

        log = (tmp_path / "gateway.log").open("wb")
        gateway = subprocess.Popen([str(colpo), "run", "--config", str(config)], env=env, stderr=log)
        deadline = time.monotonic() + 120
        while ready(metrics_port)[0] != 200 and time.monotonic() < deadline and gateway.poll() is None:
            time.sleep(0.5)
        assert ready(metrics_port) == (200, "ready\n"), (tmp_path / "gateway.log").read_text()[-3000:]

        password = tmp_path / "device-password"
        password.write_text(PASSWORDS[DEVICE] + "\n")
        simulated = subprocess.run(
            [
                sys.executable, "-m", "gateway", "simulate", "--broker", f"mqtts://127.0.0.1:{ports['8883']}",
                "--ca-file", str(ca), "--username", DEVICE, "--password-file", str(password),
                "--devices", "1", "--count", "3", "--rate", "0", "--size", "800x600", "--timeout", "60",
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert simulated.returncode == 0, simulated.stdout + simulated.stderr
        assert "photos sent: 3, answered: 3, unanswered: 0" in simulated.stdout

        status = status_as_the_monitor(ports["8883"], ca)
        assert (status["state"], status["backend"]) == ("online", "onnxruntime"), status
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(60) == 0
        assert status_as_the_monitor(ports["8883"], ca)["state"] == "offline"
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        broker.kill()
        broker.wait()
