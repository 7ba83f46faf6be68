"""``simulate``: one clear line and a failure status without a broker; fresh ids each run, repeats counted apart."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.service import GatewayService
from gateway.simulate import generated_photos, run_devices, summarize
from tests.conftest import Broker, free_port
from tests.test_service import gateway_config, start_gateway

REPO = Path(__file__).resolve().parents[1]


def test_simulate_without_a_broker_exits_1_with_one_clear_line() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "simulate", "--broker", url, "--devices", "3", "--size", "320x240"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert done.stdout == ""  # no "photos sent: 0" summary
    assert done.stderr.splitlines() == [f"simulate: 3 of 3 devices could not connect to {url}: Connection refused"]


def test_each_run_sends_fresh_ids_and_repeats_are_counted_apart(broker: Broker) -> None:
    # 12 MP photos: judging one takes far longer than answering a repeat from the store, which is what tells a
    # repeat apart (its verdict's received-to-decided time exceeds the whole round trip of the resend); at
    # 1600x1200 an idle machine judged in about 45 ms, as fast as some repeats came back (CI, 1 of 6 missed)
    photos = generated_photos(4000, 3000)[:3]
    service: GatewayService = start_gateway(gateway_config(broker))
    try:
        runs = [run_devices(broker.url, photos, devices=2, per_device=3, rate_hz=0) for _ in range(2)]
        again = run_devices(broker.url, photos, devices=2, per_device=3, rate_hz=0, run_id="rerun")
        repeated = run_devices(broker.url, photos, devices=2, per_device=3, rate_hz=0, run_id="rerun")
    finally:
        service.stop()
    ids = [{r.verdict.image_id for r in results if r.verdict} for results in (*runs, again, repeated)]
    assert all(len(each) == 6 for each in ids)
    assert ids[0].isdisjoint(ids[1])  # two runs: fresh ids, so both are judged
    assert ids[2] == ids[3] and all(re.fullmatch(r"rerun-sim-0[01]-000[0-2]", i) for i in ids[2])
    for results in (*runs, again):
        assert [r.repeat for r in results] == [False] * 6
        assert "repeats (answered from the gateway's verdict store, not judged again): 0" in summarize(results, 1.0)
    assert [r.repeat for r in repeated] == [True] * 6  # the same ids and bytes: the stored verdicts again
    summary = summarize(repeated, 1.0)
    assert "repeats (answered from the gateway's verdict store, not judged again): 6" in summary
    assert "latency ms of the repeats: p50=" in summary and "\nlatency ms: " not in summary


def test_a_repeat_is_told_apart_when_it_comes_back_slower_than_the_photo_was_judged() -> None:
    from datetime import datetime, timedelta, timezone

    from gateway.protocol import VerdictMessage, utc_timestamp
    from gateway.simulate import Photo, Result

    now = datetime.now(timezone.utc)

    def verdict(received: datetime) -> VerdictMessage:
        return VerdictMessage(
            image_id="i", site="s", device="d", verdict="accept", reasons=[], focus=None, cervix=None,
            backend="classical", models={}, timings_ms={"total": 40.0},
            received_at=utc_timestamp(received), decided_at=utc_timestamp(received + timedelta(milliseconds=40)),
        )  # fmt: skip

    photo = Photo("p", b"x")
    # a loaded machine: the stored verdict took 90 ms to come back, longer than the 40 ms judgement it records
    earlier = Result("d", photo, verdict(now - timedelta(seconds=5)), 90.0, now)
    assert earlier.repeat
    fresh = Result("d", photo, verdict(now + timedelta(milliseconds=20)), 90.0, now)
    assert not fresh.repeat
    assert Result("d", photo, verdict(now - timedelta(seconds=5)), 30.0).repeat  # shorter than its judgement
    assert not Result("d", photo, verdict(now - timedelta(seconds=5)), 90.0).repeat  # no send time: clock-free only
    assert not Result("d", photo, None, 90.0, now).repeat
