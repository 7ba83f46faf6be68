"""A photo that kills the gateway at decode (a decoder crash, the OOM killer) cannot crash-loop it: the gateway, as
its own process restarted after each death as systemd would, answers it ``poison`` after the second death and
acknowledges it, and an honest photo sent meanwhile is judged.

The photo kills the process through a test-only hook (``COLPOSCOPY_GATEWAY_TEST_KILL_MARKER`` in the gateway's
environment: a photo holding the marker gets SIGKILL at decode), since the real killers (a memory bomb under a
cgroup, a decoder bug) are what other fixes remove."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.test_reliability import config_yaml, connect_device, photos, start_process, states

__all__ = ["photos"]  # the fixture, shared with test_reliability

MARKER = b"TEST-KILL-AT-DECODE"


def test_a_photo_that_kills_the_gateway_twice_is_answered_poison_and_an_honest_one_judged(
    tmp_path: Path, broker: Broker, photos: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLPOSCOPY_GATEWAY_TEST_KILL_MARKER", MARKER.decode())
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(tmp_path, broker, workers=2, queue_size=8))
    device = connect_device(broker)
    processes = [start_process(config)]
    try:
        assert device.wait(lambda: "online" in states(device), 30), "gateway never came online"
        device.publish("poison", photos[0] + MARKER)  # bytes after the JPEG's end: the decoder would ignore them
        device.publish("honest-1", photos[1])
        deadline = time.monotonic() + 120
        while not {"poison", "honest-1"} <= set(device.verdicts()) and time.monotonic() < deadline:
            if processes[-1].poll() is not None and len(processes) < 6:
                processes.append(start_process(config))  # Restart=on-failure
            time.sleep(0.2)
        deaths = [p.returncode for p in processes if p.poll() is not None]
        assert deaths == [-signal.SIGKILL] * 2, f"deaths {deaths}, answered {sorted(device.verdicts())}"
        poison = json.loads(device.verdicts()["poison"][0])
        assert (poison["verdict"], poison["reasons"]) == ("error", ["poison"]), poison
        assert "died judging this photo 2 times" in poison["detail"]
        assert {json.loads(v)["verdict"] for v in device.verdicts()["honest-1"]} == {"accept"}

        # sent again by the device: the stored answer, no third death; others are still judged
        device.publish("poison", photos[0] + MARKER)
        device.publish("honest-2", photos[2])
        assert device.wait(lambda: len(device.verdicts().get("poison", [])) == 2 and "honest-2" in device.verdicts())
        assert device.verdicts()["poison"][1] == device.verdicts()["poison"][0]
        assert json.loads(device.verdicts()["honest-2"][0])["verdict"] == "accept"
        assert processes[-1].poll() is None and len(processes) == 3

        # acknowledged: after a clean restart, nothing comes back to be judged (or to kill it) again
        processes[-1].send_signal(signal.SIGTERM)
        assert processes[-1].wait(30) == 0
        answered = sum(len(v) for v in device.verdicts().values())
        processes.append(start_process(config))
        assert device.wait(lambda: states(device)[-1:] == ["online"], 30)
        time.sleep(2)
        assert processes[-1].poll() is None
        assert sum(len(v) for v in device.verdicts().values()) == answered
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        device.close()
