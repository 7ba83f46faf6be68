"""Fair queues: each device gets its share of the gateway's queue; a flooding device gets ``busy`` at once, and the
other devices' photos are judged (the queue's rules alone, then a real gateway behind a real Mosquitto)."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.fair_queue import FairQueue
from gateway.judge import PhotoRequest, build_judge
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from tests.conftest import Broker, make_recorder
from tests.test_service import gateway_config, props


def device_queue(capacity: int) -> FairQueue[str]:
    """Items are ``<device>:<n>``: the device is the part before the colon."""
    return FairQueue(capacity, lambda item: item.split(":")[0])


def drain(q: FairQueue[str]) -> list[str | None]:
    out: list[str | None] = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def test_devices_are_served_in_turn() -> None:
    q = device_queue(8)
    for item in ("a:1", "a:2", "a:3", "b:1", "c:1", "b:2"):
        assert q.admit(item) == []
    assert q.qsize() == 6
    assert drain(q) == ["a:1", "b:1", "c:1", "a:2", "b:2", "a:3"]


def test_a_full_queue_makes_room_for_devices_under_their_share() -> None:
    q = device_queue(4)
    for n in range(1, 5):
        assert q.admit(f"a:{n}") == []
    assert q.admit("a:5") == ["a:5"]  # full, and a holds everything: refused at once
    assert q.admit("b:1") == ["a:4"]  # share 4 // 2 = 2: b takes the place of a's newest photo
    assert q.admit("c:1") == ["a:3"]  # share 4 // 3 = 1
    assert q.admit("a:6") == ["a:6"]  # a holds 2, over its share of 1
    assert q.admit("b:2") == ["b:2"]  # b holds its share
    assert q.admit("d:1") == ["a:2"]  # share 1: a still holds the most
    assert q.admit("e:1") == ["e:1"]  # every device holds exactly its share: nobody is pushed out
    assert drain(q) == ["a:1", "b:1", "c:1", "d:1"]


def test_two_devices_on_a_queue_of_one_do_not_push_each_other_out() -> None:
    q = device_queue(1)
    assert q.admit("a:1") == []
    assert q.admit("b:1") == ["b:1"]
    assert q.admit("a:2") == ["a:2"]
    assert drain(q) == ["a:1"]


def test_stop_markers_come_after_the_waiting_items_and_get_times_out() -> None:
    q = device_queue(4)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    q.admit("a:1")
    q.put(None)
    q.put(None)
    assert [q.get(timeout=1), q.get(timeout=1), q.get(timeout=1)] == ["a:1", None, None]
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_a_waiting_worker_wakes_for_an_item() -> None:
    q = device_queue(4)
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    worker.start()
    time.sleep(0.1)
    q.admit("a:1")
    worker.join(10)
    assert got == ["a:1"]


FLOOD_FACTOR = 5
LIGHT_DEVICES = 3
LIGHT_PERIOD_S = 2.0
RUN_S = 20.0


def test_a_flooding_device_does_not_keep_the_others_waiting(broker: Broker) -> None:
    """One device floods at 5x the gateway's measured capacity; three devices sending one photo every 2 s get every
    photo judged, none busy."""
    photo = encode_jpeg(render(SceneSpec(width=1600, height=1200, seed=1)).image)
    config = gateway_config(broker, processing={"workers": 1, "queue_size": 8, "busy_retry_after_ms": 1000})
    judge = build_judge(config)
    judge.judge(PhotoRequest("m", "m", "warm-up", photo, in_run=False))
    started = time.monotonic()
    for n in range(8):  # the gateway's capacity, measured now on this machine: one worker judging back to back
        judge.judge(PhotoRequest("m", "m", f"m{n}", photo, in_run=False))
    capacity_hz = 8 / (time.monotonic() - started)
    flood_hz = FLOOD_FACTOR * capacity_hz

    service = GatewayService(config, judge)
    service.start()
    assert service.connected.wait(10)
    light = make_recorder(broker, ["colposcopy/light/+/verdicts"], client_id="light")
    flood_answers = make_recorder(broker, ["colposcopy/flood/+/verdicts"], client_id="flood-answers")
    flooder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv5)
    flooder.max_inflight_messages_set(1000)
    flooder.connect("127.0.0.1", broker.port)
    flooder.loop_start()
    stop = threading.Event()
    flood_sent = [0]

    def flood() -> None:
        begin = time.monotonic()
        while not stop.is_set():
            flooder.publish("colposcopy/flood/f1/images", photo, qos=1, properties=props(f"f{flood_sent[0]}"))
            flood_sent[0] += 1
            time.sleep(max(0.0, begin + flood_sent[0] / flood_hz - time.monotonic()))

    flooding = threading.Thread(target=flood, daemon=True)
    sent: list[str] = []
    try:
        flooding.start()
        time.sleep(2.0)  # the flood has filled the queue before the first light photo
        begin = time.monotonic()
        rounds = int(RUN_S / LIGHT_PERIOD_S)
        for k in range(rounds):
            for d in range(LIGHT_DEVICES):
                at = begin + k * LIGHT_PERIOD_S + d * LIGHT_PERIOD_S / LIGHT_DEVICES
                time.sleep(max(0.0, at - time.monotonic()))
                image_id = f"l{d}-{k}"
                light.publish(f"colposcopy/light/d{d}/images", photo, props(image_id))
                sent.append(image_id)
        flood_s = time.monotonic() - begin + 2.0
        got = light.wait_for(len(sent), timeout=60)
    finally:
        stop.set()
        flooding.join(10)
        service.stop()
        for client in (light.client, flood_answers.client, flooder):
            client.disconnect()
            client.loop_stop()

    verdicts: list[dict[str, Any]] = [json.loads(m.payload) for m in got]
    assert sorted(v["image_id"] for v in verdicts) == sorted(sent)  # every photo answered, exactly once
    assert [v for v in verdicts if v["verdict"] == "error"] == [], "a light device's photo was not judged"
    assert all(v["verdict"] == "accept" for v in verdicts)
    flood_verdicts = [json.loads(m.payload) for m in flood_answers.messages]
    busy = sum(v["reasons"] == ["busy"] for v in flood_verdicts)
    offered_hz = flood_sent[0] / flood_s
    print(
        f"capacity {capacity_hz:.1f}/s; flood offered {offered_hz:.1f}/s ({offered_hz / capacity_hz:.1f}x),"
        f" {busy} busy of {len(flood_verdicts)} answered; light photos {len(verdicts)}, all judged"
    )
    assert offered_hz >= 2 * capacity_hz, "the flood did not overload the gateway: the test proves nothing"
    assert busy > 0 and len(flood_verdicts) - busy > 0  # the flooder was refused, and still got its share judged
