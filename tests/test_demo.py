"""``scripts/demo.sh`` as a user runs it: its own state folder, fresh ids each run, the gateway log kept, and a
clean stop on Ctrl-C (no traceback, no temp folder left)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "COLPO_DEMO_NO_BOOTSTRAP": "1",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "TMPDIR": str(tmp_path / "tmp"),
        "PYTHONUNBUFFERED": "1",
        "PATH": os.environ.get("PATH", "") + ":/usr/sbin",
    }
    return subprocess.Popen(
        ["bash", "scripts/demo.sh", "--size", "320x240", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C reaches the whole group, as on a terminal
        # as on a terminal, Ctrl-C is not ignored: a test run started in the background inherits SIGINT ignored,
        # which a non-interactive bash cannot trap and Python keeps ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(demo: subprocess.Popen[str]) -> str:
    out, _ = demo.communicate(timeout=120)
    return out


def test_demo_runs_twice_with_its_own_state_fresh_ids_and_keeps_the_log(tmp_path: Path) -> None:
    outputs = []
    for _ in range(2):
        demo = start_demo(tmp_path, "--count", "2")
        out = finish(demo)
        assert demo.returncode == 0, out
        outputs.append(out)
    demo_state = tmp_path / "state" / "colposcopy-gateway-demo"
    for out in outputs:
        assert "photos sent: 6, answered: 6, unanswered: 0" in out, out
        assert "repeats (answered from the gateway's verdict store, not judged again): 0" in out, out
        assert f"== gateway log kept in {demo_state / 'gateway.log'}" in out
        assert "Traceback" not in out
    assert "gateway_started" in (demo_state / "gateway.log").read_text()
    assert (demo_state / "verdicts.sqlite3").is_file()
    assert not (tmp_path / "state" / "colposcopy-gateway").exists()  # the user's real state folder: untouched
    assert list((tmp_path / "tmp").glob("tmp.*")) == []  # the temp folder (mktemp -d) is gone


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    demo = start_demo(tmp_path, "--count", "200")
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if line.startswith("sim-"):  # the devices are sending
            break
    os.killpg(demo.pid, signal.SIGINT)
    out = "".join(seen) + finish(demo)
    assert demo.returncode == 130, out
    assert "Traceback" not in out, out
    assert "interrupted" in out and "photos sent:" in out  # the summary of what was sent
    log = tmp_path / "state" / "colposcopy-gateway-demo" / "gateway.log"
    assert f"== gateway log kept in {log}" in out
    assert "gateway_stopped" in log.read_text()
    assert list((tmp_path / "tmp").glob("tmp.*")) == []
