"""scripts/install.sh without systemd: a temporary --root, and stand-ins on PATH for the commands that change the
machine (systemctl, useradd, usermod, apt-get) and for the venv's pip, each recording its calls. The venv's
colpo-gateway is the real one, so the installed config is really validated."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install.sh"
CONFIG = "etc/colposcopy-gateway/gateway.yaml"

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{calls}"
"""
SYSTEMCTL = (
    RECORDER
    + """case "$1" in
  is-active) [ -e "{active}" ] ;;
  *) exit 0 ;;
esac
"""
)


@dataclass
class Machine:
    root: Path
    bin: Path
    calls: Path
    active: Path
    """Present while the stand-in systemctl says the service is active."""

    def install(self, *options: str) -> subprocess.CompletedProcess[str]:
        self.calls.write_text("")
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"}
        return subprocess.run(
            ["bash", str(SCRIPT), "--root", str(self.root), *options],
            capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
        )  # fmt: skip

    def systemctl(self) -> list[str]:
        return [line.removeprefix("systemctl ") for line in self.calls.read_text().splitlines() if "systemctl" in line]


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return make_machine(tmp_path)


def make_machine(tmp_path: Path) -> Machine:
    root, standins, calls, active = tmp_path / "root", tmp_path / "bin", tmp_path / "calls", tmp_path / "active"
    standins.mkdir(parents=True)
    for name in ("useradd", "usermod", "apt-get"):
        _script(standins / name, RECORDER.format(calls=calls))
    _script(standins / "systemctl", SYSTEMCTL.format(calls=calls, active=active))
    venv = root / "opt" / "colposcopy-gateway" / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)  # the venv exists: not made again
    _script(venv / "pip", RECORDER.format(calls=calls))
    real = Path(sys.executable).parent / "colpo-gateway"
    assert real.exists(), "the package is not installed in this venv"
    _script(venv / "colpo-gateway", f'#!/bin/sh\necho "colpo-gateway $*" >> "{calls}"\nexec "{real}" "$@"\n')
    return Machine(root, standins, calls, active)


def test_a_first_install_enables_but_does_not_start_and_says_what_next(machine: Machine) -> None:
    result = machine.install()
    assert result.returncode == 0, result.stderr
    assert machine.systemctl() == ["daemon-reload", "is-active --quiet colposcopy-gateway", "enable colposcopy-gateway"]
    out = result.stdout
    assert "Installed and enabled, NOT started" in out
    assert f"edit {machine.root}/{CONFIG}" in out and f"{machine.root}/etc/colposcopy-gateway/mqtt-password" in out
    assert "sudo systemctl start colposcopy-gateway" in out
    config = (machine.root / CONFIG).read_text()
    assert "  manifest: /opt/colposcopy-gateway/engines/manifest.yaml" in config  # the real path, not the root's
    assert f"colpo-gateway config validate {machine.root}/{CONFIG}" in machine.calls.read_text()
    password = machine.root / "etc/colposcopy-gateway/mqtt-password"
    assert password.read_text() == "" and stat.S_IMODE(password.stat().st_mode) == 0o600
    unit = machine.root / "etc/systemd/system/colposcopy-gateway.service"
    assert unit.read_text() == (REPO / "systemd" / "colposcopy-gateway.service").read_text()
    assert (machine.root / "opt/colposcopy-gateway/engines/manifest.yaml").is_file()


def test_start_starts_a_first_install(machine: Machine) -> None:
    result = machine.install("--start")
    assert result.returncode == 0, result.stderr
    assert machine.systemctl()[-2:] == ["enable colposcopy-gateway", "start colposcopy-gateway"]
    assert "Installed and started" in result.stdout


def test_an_upgrade_restarts_a_running_service_and_keeps_its_config(machine: Machine) -> None:
    assert machine.install().returncode == 0
    config = machine.root / CONFIG
    config.write_text(config.read_text().replace("gateway_id: gw-1", "gateway_id: gw-clinic-a"))
    machine.active.touch()  # the clinic started it
    result = machine.install()
    assert result.returncode == 0, result.stderr
    assert machine.systemctl()[-2:] == ["enable colposcopy-gateway", "restart colposcopy-gateway"]
    assert "Installed and restarted" in result.stdout
    assert "gateway_id: gw-clinic-a" in config.read_text()

    machine.active.unlink()  # configured but stopped: a run with a config it did not create starts it
    result = machine.install()
    assert machine.systemctl()[-2:] == ["enable colposcopy-gateway", "start colposcopy-gateway"]
    assert result.returncode == 0 and "Installed and started" in result.stdout


def test_no_start_leaves_the_service_alone(machine: Machine) -> None:
    machine.active.touch()
    result = machine.install("--no-start")
    assert result.returncode == 0, result.stderr
    assert machine.systemctl() == ["daemon-reload", "is-active --quiet colposcopy-gateway"]
