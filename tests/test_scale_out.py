"""Two gateways share one broker through an MQTT 5 shared subscription: every photo is answered exactly once,
the load is split, and when one stops the other answers the rest."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import GatewayConfig, parse_config
from gateway.judge import build_judge
from gateway.service import GatewayService
from gateway.store import VerdictStore
from tests.conftest import Broker
from tests.test_reliability import connect_device, photos  # noqa: F401 - the photos fixture


def config(tmp_path: Path, broker: Broker, gateway_id: str) -> GatewayConfig:
    return parse_config(
        f"gateway_id: {gateway_id}\nbackend: classical\nbroker:\n  url: {broker.url}\n  share_group: clinic\n"
        f"processing:\n  workers: 1\n  queue_size: 16\n"
        "metrics:\n  enabled: false\n",
        "<test>",
    )


def test_two_gateways_split_the_photos_and_the_survivor_takes_over(
    tmp_path: Path,
    broker: Broker,
    photos: list[bytes],  # noqa: F811
) -> None:
    gateways: dict[str, GatewayService] = {}
    stores: dict[str, VerdictStore] = {}  # each gateway's own: what it judged
    for name in ("gw-a", "gw-b"):
        cfg = config(tmp_path, broker, name)
        stores[name] = VerdictStore(tmp_path / f"{name}.sqlite3", 3600, 1000)
        gateways[name] = GatewayService(cfg, build_judge(cfg), stores[name])
        gateways[name].start()
    device = connect_device(broker)
    try:
        assert all(g.connected.wait(10) for g in gateways.values())
        for n in range(12):
            device.publish(f"img-{n:02d}", photos[n])
        assert device.wait(lambda: len(device.verdicts()) == 12, 30), sorted(device.verdicts())
        verdicts = device.verdicts()
        assert all(len(v) == 1 for v in verdicts.values()), "a photo was answered twice"
        judged = {name: len(store) for name, store in stores.items()}
        assert sum(judged.values()) == 12 and min(judged.values()) >= 3, judged  # the broker alternates

        gateways["gw-a"].stop()  # gw-b is online: gw-a leaves the share group before it goes
        for n in range(12, 24):
            device.publish(f"img-{n:02d}", photos[n])
        assert device.wait(lambda: len(device.verdicts()) == 24, 30), sorted(device.verdicts())
        assert all(len(v) == 1 for v in device.verdicts().values())
        assert len(stores["gw-b"]) == 24 - judged["gw-a"]
        assert all(json.loads(v[0])["verdict"] == "accept" for v in device.verdicts().values())
    finally:
        for g in gateways.values():
            g.stop(grace_s=5)
        device.close()
