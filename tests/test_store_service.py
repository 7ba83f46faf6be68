"""The verdict store in the running gateway. It is a cache: a state disk that cannot be written (here a full tmpfs)
never costs a verdict, an acknowledgement or a Receive Maximum slot; the status says ``degraded`` while it lasts and
recovers by itself. A damaged file is moved aside; a device's recapture run outlives a restart."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import parse_config
from gateway.judge import build_judge
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from gateway.store import PhotoKey, VerdictStore
from tests.conftest import Broker, Recorder

STATUS = "colposcopy/gateways/gw-f/status"
VERDICTS = "colposcopy/s/d/verdicts"


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted on ``folder`` (needs root and a container that allows mounts; skipped otherwise)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root and mount permission needed): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full (ENOSPC); the filler, to delete to free it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def image_props(image_id: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("image-id", image_id)]
    return props


def statuses(recorder: Recorder) -> list[dict[str, Any]]:
    with recorder.cond:
        return [json.loads(m.payload) for m in recorder.messages if m.topic == STATUS]


def verdicts(recorder: Recorder) -> dict[str, list[bytes]]:
    got: dict[str, list[bytes]] = {}
    with recorder.cond:
        for m in recorder.messages:
            if m.topic == VERDICTS:
                got.setdefault(json.loads(m.payload)["image_id"], []).append(m.payload)
    return got


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [encode_jpeg(render(SceneSpec(width=800, height=600, seed=300 + n)).image) for n in range(30)]


def gateway_settings(broker: Broker, store: Path, **processing: int) -> dict[str, Any]:
    return {
        "gateway_id": "gw-f",
        "backend": "classical",
        "broker": {"url": broker.url},
        "processing": {"workers": 2, "queue_size": 4, **processing},
        "store": {"path": str(store)},
        "metrics": {"port": 0},
    }


def test_a_full_state_disk_costs_no_verdict_and_no_slot(
    tmp_path: Path, broker: Broker, recorder: Recorder, photos: list[bytes]
) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:  # room for SQLite's WAL (up to 1000 pages before a checkpoint)
        # Receive Maximum 2 x (4 + 2) = 12
        config = parse_config("", "<test>", gateway_settings(broker, disk / "verdicts.sqlite3"))
        service = GatewayService(config, build_judge(config))
        service.start()
        try:
            assert service.connected.wait(10)
            assert recorder.wait_for(1, STATUS)[0] and statuses(recorder)[-1]["state"] == "online"

            def send(n: int, copies: int) -> list[dict[str, Any]]:
                """Photo n, ``copies`` times back to back (a twin arrives while the first is judged); its answers."""
                for _ in range(copies):
                    recorder.client.publish("colposcopy/s/d/images", photos[n], qos=1, properties=image_props(f"p{n}"))
                recorder.wait_for(sum(len(v) for v in verdicts(recorder).values()) + copies, VERDICTS, 30)
                answers = verdicts(recorder).get(f"p{n}", [])
                assert len(answers) == copies, f"p{n}: {len(answers)} of {copies} answered"
                assert len(set(answers)) == 1, f"p{n} got different answers"
                return [json.loads(a) for a in answers]

            assert send(0, 1)[0]["verdict"] == "accept"
            stored_before = len(service._store)
            filler = fill(disk)
            # 2 x 10 photos, more than the 12 slots of Receive Maximum: each judged and answered, none internal
            for n in range(1, 11):
                assert [a["verdict"] for a in send(n, 2)] == ["accept", "accept"]
            assert recorder.wait_for(2, STATUS)
            degraded = statuses(recorder)[-1]
            assert degraded["state"] == "degraded" and "verdict store" in degraded["detail"], degraded
            assert "full" in degraded["detail"], degraded
            filler.unlink()
            # recovers by itself (an idle worker probes the store), and serves on: 14 more, again over 12 slots
            assert recorder.wait_for(3, STATUS, 20)[-1] and statuses(recorder)[-1]["state"] == "online"
            for n in range(11, 25):
                assert send(n, 1)[0]["verdict"] == "accept"
            assert [s["state"] for s in statuses(recorder)] == ["online", "degraded", "online"]
            assert len(service._store) >= stored_before + 14
            with service._settled:
                assert service._settled.wait_for(lambda: service._unacked == 0, 10), service._unacked
        finally:
            service.stop()


def test_a_damaged_store_on_a_read_only_disk_is_degraded_until_it_can_be_moved_aside(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        path = disk / "verdicts.sqlite3"
        path.write_bytes(b"power cut " * 500)  # not a database any more
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        store = VerdictStore(path, 3600, 1000)
        assert store.fault is not None and "cannot be opened" in store.fault and store.in_memory
        key = PhotoKey.of("s", "d", "i", b"x")
        assert store.put(key, b"v", None) and store.get(key) is not None  # in memory meanwhile
        assert not store.probe() and store.fault is not None
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert store.probe() and store.fault is None and not store.in_memory
        assert [p.name.split(".damaged-")[0] for p in disk.glob("*.damaged-*")] == ["verdicts.sqlite3"]
        assert store.put(key, b"v", None) and store.get(key) is not None
        store.close()
        assert VerdictStore(path, 3600, 1000).get(key) is not None


def test_a_restart_keeps_each_devices_recapture_run(tmp_path: Path, broker: Broker, recorder: Recorder) -> None:
    scenes = [SceneSpec(width=800, height=600, blur="defocus", blur_px=9, seed=400 + n) for n in range(4)]
    blurred = [encode_jpeg(render(scene).image) for scene in scenes]
    settings = gateway_settings(broker, tmp_path / "verdicts.sqlite3")
    config = parse_config("", "<test>", {**settings, "policy": {"max_consecutive_recaptures": 2}})

    def judge(n: int) -> dict[str, Any]:
        recorder.client.publish("colposcopy/s/d/images", blurred[n], qos=1, properties=image_props(f"b{n}"))
        recorder.wait_for(n + 1, VERDICTS, 30)
        return json.loads(verdicts(recorder)[f"b{n}"][0])

    service = GatewayService(config, build_judge(config))
    service.start()
    try:
        assert service.connected.wait(10)
        assert [judge(n)["verdict"] for n in (0, 1)] == ["recapture", "recapture"]
    finally:
        service.stop()
    service = GatewayService(config, build_judge(config))  # a restart: a new process would start the same way
    service.start()
    try:
        assert service.connected.wait(10)
        third = judge(2)  # the operator's third try: the run goes on, the photo is accepted at the limit
        assert third["verdict"] == "accept" and third["reasons"][0] == "recapture_limit", third
        assert third["best_image_id"] in ("b0", "b1", "b2")
        assert judge(3)["verdict"] == "recapture"  # a new run
    finally:
        service.stop()
