"""Decoding attacks end to end, on a real Mosquitto: memory bombs under the pixel limit (several at once, with an
honest photo from another device meanwhile; the gateway as its own process in a memory cgroup) and JPEGs with
damage hidden inside their compressed data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.decode import DecodeLimits, plan
from gateway.judge import Judge, build_judge
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from tests.conftest import Broker, Recorder, make_recorder
from tests.test_decode import hide_damage, png_bomb
from tests.test_service import body, props

REPO = Path(__file__).resolve().parents[1]
BOMB_DEVICE = "colposcopy/s/attacker/images"
HONEST_DEVICE = "colposcopy/s/honest/images"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb()


@pytest.fixture(scope="module")
def honest_jpeg() -> bytes:
    return encode_jpeg(render(SceneSpec(width=1600, height=1200, seed=1)).image)


def bomb_cost(bomb: bytes) -> int:
    return plan(bomb, DecodeLimits(max_decoded_bytes=2**40)).decoded_bytes


def service_yaml(broker: Broker, tmp_path: Path, *, workers: int, decode: dict[str, Any]) -> str:
    processing = {"workers": workers, "queue_size": 16}
    return (
        f"gateway_id: gw-mem\nbackend: classical\nbroker:\n  url: {broker.url}\n  keepalive_s: 5\n"
        f"processing: {json.dumps(processing)}\ndecode: {json.dumps(decode)}\n"
        f"store:\n  path: {tmp_path / 'verdicts.sqlite3'}\nmetrics:\n  port: 0\nlogging:\n  format: json\n"
    )


@contextmanager
def running(config: GatewayConfig, judge: Judge | None = None) -> Iterator[GatewayService]:
    service = GatewayService(config, judge or build_judge(config))
    service.start()
    try:
        assert service.connected.wait(10)
        yield service
    finally:
        service.stop()


def send_bombs_and_an_honest_photo(recorder: Recorder, bomb: bytes, honest: bytes, bombs: int) -> None:
    for n in range(bombs):
        recorder.publish(BOMB_DEVICE, bomb, props(f"bomb-{n}"))
    recorder.publish(HONEST_DEVICE, honest, props("honest"))


def verdicts_so_far(recorder: Recorder) -> list[dict[str, Any]]:
    with recorder.cond:
        return [body(m) for m in recorder.messages if m.topic.endswith("/verdicts")]


def verdicts_in_order(recorder: Recorder, count: int, timeout: float) -> list[dict[str, Any]]:
    with recorder.cond:
        recorder.cond.wait_for(lambda: len(verdicts_so_far(recorder)) >= count, timeout)
    got = verdicts_so_far(recorder)
    assert len(got) == count, [(v["image_id"], v["verdict"], v["reasons"]) for v in got]
    return got


def judged_black(verdict: dict[str, Any]) -> bool:
    """A bomb that was decoded and judged: all black, so no cervix (recapture, or accept once the device's
    recapture run reaches its limit)."""
    return verdict["verdict"] != "error" and {"cervix_not_found", "too_dark"} <= set(verdict["reasons"])


def short_of_memory(verdict: dict[str, Any]) -> bool:
    """Answered busy because the decode budget stayed full for memory_wait_s."""
    return verdict["reasons"] == ["busy"] and "short of memory" in verdict["detail"] and verdict["retry_after_ms"] > 0


# ----------------------------------------------------------------------------------------------- memory bombs


def test_a_memory_bomb_under_the_pixel_limit_is_too_large_and_the_honest_photo_is_judged(
    tmp_path: Path, broker: Broker, recorder: Recorder, bomb: bytes, honest_jpeg: bytes
) -> None:
    """With the default limits: 7071x7071 16-bit RGBA passes max_pixels and max_payload_bytes, and is refused from
    its header for the memory its decode would take."""
    config = parse_config(service_yaml(broker, tmp_path, workers=2, decode={}), "<test>")
    with running(config):
        send_bombs_and_an_honest_photo(recorder, bomb, honest_jpeg, bombs=3)
        verdicts = {v["image_id"]: v for v in verdicts_in_order(recorder, 4, 60)}
    for n in range(3):
        assert (verdicts[f"bomb-{n}"]["verdict"], verdicts[f"bomb-{n}"]["reasons"]) == ("error", ["too_large"])
        assert "7071x7071" in verdicts[f"bomb-{n}"]["detail"]
    assert verdicts["honest"]["verdict"] == "accept"


def test_memory_bombs_share_the_budget_and_an_honest_photo_is_judged_meanwhile(
    tmp_path: Path, broker: Broker, recorder: Recorder, bomb: bytes, honest_jpeg: bytes
) -> None:
    """Bombs allowed per photo, a budget for two at once, four workers: the bombs are judged two at a time, the
    decoders never hold more than the budget, and the honest photo does not wait for the bombs."""
    cost = bomb_cost(bomb)
    decode = {"max_decoded_bytes": cost, "memory_budget_bytes": 2 * cost + cost // 2, "memory_wait_s": 30}
    config = parse_config(service_yaml(broker, tmp_path, workers=4, decode=decode), "<test>")
    judge = build_judge(config)
    with running(config, judge):
        send_bombs_and_an_honest_photo(recorder, bomb, honest_jpeg, bombs=5)
        verdicts = verdicts_in_order(recorder, 6, 300)
    by_id = {v["image_id"]: v for v in verdicts}
    assert set(by_id) == {"honest", *(f"bomb-{n}" for n in range(5))}
    bombs = [by_id[f"bomb-{n}"] for n in range(5)]
    assert all(judged_black(v) or short_of_memory(v) for v in bombs), bombs
    assert sum(map(judged_black, bombs)) >= 3, bombs  # two at once, then more as room is given back
    assert by_id["honest"]["verdict"] == "accept"
    order = [v["image_id"] for v in verdicts]
    assert order.index("honest") < len(order) - 1, order  # answered while bombs were still being judged
    # two bombs at once (and the honest photo beside them, which fits), never a third
    assert 2 * cost <= judge.budget.peak <= judge.budget.total_bytes < 3 * cost
    assert judge.budget.in_use == 0


def test_a_bomb_that_finds_no_room_in_time_is_answered_busy(
    tmp_path: Path, broker: Broker, recorder: Recorder, bomb: bytes, honest_jpeg: bytes
) -> None:
    cost = bomb_cost(bomb)
    decode = {"max_decoded_bytes": cost, "memory_budget_bytes": cost, "memory_wait_s": 0}
    config = parse_config(service_yaml(broker, tmp_path, workers=2, decode=decode), "<test>")
    with running(config):
        send_bombs_and_an_honest_photo(recorder, bomb, honest_jpeg, bombs=2)
        verdicts = {v["image_id"]: v for v in verdicts_in_order(recorder, 3, 120)}
    bombs = [verdicts[f"bomb-{n}"] for n in range(2)]
    assert sorted(map(judged_black, bombs)) == [False, True], bombs
    busy = next(v for v in bombs if not judged_black(v))
    assert short_of_memory(busy) and busy["retry_after_ms"] == config.processing.busy_retry_after_ms
    # the honest photo fits only while no bomb holds the whole budget
    assert verdicts["honest"]["verdict"] == "accept" or short_of_memory(verdicts["honest"])


# ----------------------------------------------------------------------------------------------- memory cgroup


def _memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A fresh memory cgroup (v2, else v1) with this limit and no swap; skips the test where none can be made."""
    name = f"colpo-test-{uuid.uuid4().hex[:8]}"
    top = Path("/sys/fs/cgroup")
    candidates = [("v2", root) for root in (top, top / "unified") if "memory" in _controllers(root)]
    if (top / "memory" / "memory.limit_in_bytes").exists():
        candidates.append(("v1", top / "memory"))
    for version, root in candidates:
        group = root / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            if version == "v2":
                (group / "memory.max").write_text(str(limit_bytes))
                (group / "memory.swap.max").write_text("0")
            else:
                (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
                (group / "memory.swappiness").write_text("0")
            yield group
        finally:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        return
    pytest.skip("cannot create a memory cgroup here (needs a writable cgroup v1 or v2 memory controller)")


def _controllers(root: Path) -> list[str]:
    try:
        return (root / "cgroup.subtree_control").read_text().split()
    except OSError:
        return []


def _peak_bytes(group: Path) -> int:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        if (group / name).exists():
            return int((group / name).read_text())
    return -1


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    # the stand-in for a small Jetson: room for the gateway and its budget, not for four 16-bit decodes at once
    yield from _memory_cgroup(1536 * 1024 * 1024)


def test_memory_bombs_do_not_get_the_gateway_oom_killed(
    tmp_path: Path, broker: Broker, bomb: bytes, honest_jpeg: bytes, memory_cgroup: Path
) -> None:
    """The gateway as its own process under a 1.5 GiB memory limit, four workers, six bombs at once: before the
    budget (0.6 GB a bomb, unbounded) it was OOM-killed and the honest photo never judged."""
    cost = bomb_cost(bomb)
    decode = {"max_decoded_bytes": cost, "memory_budget_bytes": 2 * cost, "memory_wait_s": 30}
    config = tmp_path / "gateway.yaml"
    config.write_text(service_yaml(broker, tmp_path, workers=4, decode=decode))
    procs = memory_cgroup / "cgroup.procs"
    log = (tmp_path / "gateway.log").open("w")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stderr=log,
        preexec_fn=lambda: procs.write_text(str(os.getpid())),  # joins before exec: all of it is counted
    )
    recorder = make_recorder(broker, ["colposcopy/#"], client_id="mem-recorder")
    try:
        online = recorder.wait_for(1, "colposcopy/gateways/gw-mem/status", 60)
        assert online and json.loads(online[0].payload)["state"] == "online", (tmp_path / "gateway.log").read_text()
        send_bombs_and_an_honest_photo(recorder, bomb, honest_jpeg, bombs=6)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and gateway.poll() is None and len(verdicts_so_far(recorder)) < 7:
            time.sleep(0.5)
        assert gateway.poll() is None, f"the gateway died (exit {gateway.returncode}): OOM-killed in its cgroup"
        verdicts = {v["image_id"]: v for v in verdicts_so_far(recorder)}
        assert set(verdicts) == {"honest", *(f"bomb-{n}" for n in range(6))}
        bombs = [verdicts[f"bomb-{n}"] for n in range(6)]
        assert all(judged_black(v) or short_of_memory(v) for v in bombs), bombs
        assert sum(map(judged_black, bombs)) >= 3, bombs
        assert verdicts["honest"]["verdict"] == "accept"
        print(f"\ncgroup peak {_peak_bytes(memory_cgroup) / 2**20:.0f} MiB, budget {2 * cost / 2**20:.0f} MiB")
    finally:
        recorder.client.disconnect()
        recorder.client.loop_stop()
        if gateway.poll() is None:
            gateway.terminate()
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        log.close()


# ----------------------------------------------------------------------------------------------- hidden damage


def test_jpegs_with_hidden_damage_get_undecodable_and_the_intact_one_is_judged(
    tmp_path: Path, broker: Broker, recorder: Recorder, honest_jpeg: bytes
) -> None:
    config = parse_config(service_yaml(broker, tmp_path, workers=2, decode={}), "<test>")
    damaged = {
        f"{mode}-{int(fraction * 100)}": hide_damage(honest_jpeg, fraction, mode, seed)
        for seed, (mode, fraction) in enumerate([("zeroed", 0.2), ("cut", 0.2), ("zeroed", 0.6), ("cut", 0.6)])
    }
    with running(config):
        for image_id, payload in damaged.items():
            recorder.publish(HONEST_DEVICE, payload, props(image_id))
        recorder.publish(HONEST_DEVICE, honest_jpeg, props("intact"))
        verdicts = {v["image_id"]: v for v in verdicts_in_order(recorder, 5, 60)}
    for image_id in damaged:
        assert (verdicts[image_id]["verdict"], verdicts[image_id]["reasons"]) == ("error", ["undecodable"]), image_id
        assert "damaged" in verdicts[image_id]["detail"]
    assert verdicts["intact"]["verdict"] == "accept"
