"""Prometheus metrics, /healthz and /readyz, scraped over HTTP while photos flow through a real Mosquitto."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from gateway.config import GatewayConfig, MetricsConfig, parse_config
from gateway.judge import build_judge
from gateway.metrics import Metrics
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from tests.conftest import free_port, make_recorder, start_mosquitto


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_status(url: str, expected: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(url)
        if status == expected or time.monotonic() > deadline:
            assert status == expected, body
            return body
        time.sleep(0.1)


def config_for(port: int, tmp_path: Path, **more: Any) -> GatewayConfig:
    return parse_config(
        "",
        "<test>",
        {
            "gateway_id": "gw-metrics",
            "backend": "classical",
            "broker": {"url": f"mqtt://127.0.0.1:{port}"},
            "store": {"path": str(tmp_path / "verdicts.sqlite3")},
            "metrics": {"port": 0},
            **more,
        },
    )


def props(image_id: str) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("image-id", image_id)]
    return p


def test_metrics_count_photos_and_verdicts_and_readyz_follows_the_broker(tmp_path: Path) -> None:
    port = free_port()
    config = config_for(port, tmp_path)
    service = GatewayService(config, build_judge(config))
    service.start()
    broker = None
    try:
        assert service.metrics_port
        base = f"http://127.0.0.1:{service.metrics_port}"
        assert get(f"{base}/healthz") == (200, "alive\n")
        assert "waiting for broker at" in wait_status(f"{base}/readyz", 503)  # no broker yet
        assert samples(service.metrics_port)[("colpo_gateway_broker_connected", frozenset())] == 0

        broker = start_mosquitto(tmp_path / "broker", port=port)
        wait_status(f"{base}/readyz", 200, timeout=30)
        recorder = make_recorder(broker, ["colposcopy/#"])
        sharp = encode_jpeg(render(SceneSpec(width=1600, height=1200, seed=1)).image)
        blurred = encode_jpeg(render(SceneSpec(width=1600, height=1200, blur="defocus", blur_px=9, seed=2)).image)
        for image_id, photo in (("a", sharp), ("b", blurred), ("c", sharp)):
            recorder.publish("colposcopy/s/d/images", photo, props(image_id))
        assert len(recorder.wait_for(3, "colposcopy/s/d/verdicts")) == 3
        recorder.client.disconnect()
        recorder.client.loop_stop()

        deadline = time.monotonic() + 10  # a verdict is counted just after it is published: allow for that
        while True:
            got = samples(service.metrics_port)
            counted = sum(v for (name, _), v in got.items() if name == "colpo_gateway_verdicts_total")
            if counted >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)

        def value(name: str, **labels: str) -> float:
            return got[(name, frozenset(labels.items()))]

        assert value("colpo_gateway_photos_received_total") == 3
        assert value("colpo_gateway_verdicts_total", outcome="accept") == 2
        assert value("colpo_gateway_verdicts_total", outcome="recapture") == 1
        assert value("colpo_gateway_verdict_reasons_total", outcome="recapture", reason="out_of_focus") == 1
        for stage in ("queue", "decode", "inference", "total"):
            assert value(f"colpo_gateway_{stage}_seconds_count") == 3
            assert value(f"colpo_gateway_{stage}_seconds_sum") > 0
        assert not any(name.startswith("colpo_gateway_batch_size") for name, _ in got)  # classical: no models
        assert value("colpo_gateway_backend_info", backend="classical", state="online") == 1
        assert value("colpo_gateway_broker_connected") == 1
        assert value("colpo_gateway_queue_depth") == 0

        broker.stop()
        assert "waiting for broker at" in wait_status(f"{base}/readyz", 503)
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/nothing")[0] == 404
    finally:
        service.stop()
        if broker is not None:
            broker.stop()


def test_batch_sizes_of_each_model_are_exported(tmp_path: Path) -> None:
    """Photos of 4 devices at once through the committed ONNX models: every photo passes each model once, in
    batches of at most models.max_batch."""
    broker = start_mosquitto(tmp_path / "broker")
    config = config_for(broker.port, tmp_path, backend="onnxruntime", models={"max_batch": 4})
    service = GatewayService(config, build_judge(config))
    service.start()
    try:
        assert service.connected.wait(15)
        recorder = make_recorder(broker, ["colposcopy/+/+/verdicts"])
        photo = encode_jpeg(render(SceneSpec(width=1600, height=1200, seed=3)).image)
        for n in range(8):
            recorder.publish(f"colposcopy/s/d{n % 4}/images", photo, props(f"p{n}"))
        verdicts = recorder.wait_for(8, "colposcopy/s/", timeout=60)
        assert sorted(json.loads(m.payload)["image_id"] for m in verdicts) == [f"p{n}" for n in range(8)]
        assert all(json.loads(m.payload)["backend"] == "onnxruntime" for m in verdicts)
        recorder.client.disconnect()
        recorder.client.loop_stop()
        assert service.metrics_port
        got = samples(service.metrics_port)
        for model in ("cervix-detector", "focus-classifier"):
            labels = frozenset({("model", model)})
            assert got[("colpo_gateway_batch_size_sum", labels)] == 8  # every photo once
            assert 2 <= got[("colpo_gateway_batch_size_count", labels)] <= 8  # 8 rows at most 4 per call
            assert (
                got[("colpo_gateway_batch_size_bucket", labels | {("le", "4.0")})]
                == got[("colpo_gateway_batch_size_count", labels)]
            )  # no call over max_batch
    finally:
        service.stop()
        broker.stop()


def test_each_service_has_its_own_registry_and_a_taken_port_is_not_fatal() -> None:
    first = Metrics(MetricsConfig(port=0), lambda: None, lambda: 0, lambda: True)
    first.serve()
    assert first.port
    try:
        second = Metrics(MetricsConfig(port=first.port), lambda: "no", lambda: 0, lambda: False)
        second.serve()  # the port is taken: logged, and the gateway runs on without the endpoint
        assert second.port is None
        first.photo_received()
        assert get(f"http://127.0.0.1:{first.port}/readyz") == (200, "ready\n")
        assert second.registry.get_sample_value("colpo_gateway_photos_received_total") == 0
        assert first.registry.get_sample_value("colpo_gateway_photos_received_total") == 1
    finally:
        first.close()
    disabled = Metrics(MetricsConfig(enabled=False), lambda: None, lambda: 0, lambda: True)
    disabled.serve()
    assert disabled.port is None


def test_broker_drops_are_logged_at_each_increase_and_exported(tmp_path: Path) -> None:
    """A client's queue at the broker overflows (an absent device with a persistent session): the broker's $SYS
    dropped counter rises, and the gateway logs each increase and exports the count."""
    broker = start_mosquitto(tmp_path / "broker", "sys_interval 1\nmax_queued_messages 2\n")
    config = config_for(broker.port, tmp_path)
    service = GatewayService(config, build_judge(config))
    absent = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="absent", protocol=mqtt.MQTTv5)
    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 600
    absent.connect("127.0.0.1", broker.port, clean_start=True, properties=connect)
    absent.loop_start()
    absent.subscribe("colposcopy/x/y/verdicts", qos=1)
    time.sleep(0.5)
    absent.disconnect()
    absent.loop_stop()
    publisher = make_recorder(broker, ["colposcopy/none"], client_id="publisher")
    try:
        with capture_logs() as logs:
            service.start()
            assert service.connected.wait(10) and service.metrics_port
            for round_, expected in ((5, 3), (4, 7)):  # 2 queued, then every one dropped
                for n in range(round_):
                    publisher.publish("colposcopy/x/y/verdicts", f"v{n}".encode())

                def exported(total: int) -> bool:
                    assert service.metrics_port
                    return (
                        samples(service.metrics_port).get(("colpo_gateway_broker_dropped_messages_total", frozenset()))
                        == total
                    )

                deadline = time.monotonic() + 20
                while not exported(expected) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert exported(expected)
        drops = [e for e in logs if e["event"] == "broker_dropped_messages"]
        assert [(e["dropped"], e["broker_total"]) for e in drops] == [(3, 3), (4, 7)]
        assert all(e["log_level"] == "error" for e in drops)
    finally:
        publisher.client.disconnect()
        publisher.client.loop_stop()
        service.stop()
        broker.stop()
