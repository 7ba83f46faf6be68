"""End to end on a real Mosquitto: photos in, verdicts and recapture requests out, message by message."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import GatewayConfig, parse_config
from gateway.judge import build_judge
from gateway.protocol import derive_image_id
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from gateway.transport import maximum_packet_size
from tests.conftest import Broker, Recorder

SIZE = {"width": 1600, "height": 1200}


@pytest.fixture(scope="module")
def sharp_jpeg() -> bytes:
    return encode_jpeg(render(SceneSpec(**SIZE, seed=1)).image)


@pytest.fixture(scope="module")
def blurred_jpeg() -> bytes:
    return encode_jpeg(render(SceneSpec(**SIZE, blur="defocus", blur_px=9, seed=2)).image)


def gateway_config(broker: Broker, **sections: Any) -> GatewayConfig:
    """The service's MQTT behaviour on the classical backend (the models' own tests are elsewhere)."""
    settings = {"gateway_id": "gw-test", "backend": "classical", "broker": {"url": broker.url}, **sections}
    return parse_config("", "<test>", settings)


def start_gateway(config: GatewayConfig) -> GatewayService:
    service = GatewayService(config, build_judge(config))
    service.start()
    assert service.connected.wait(10), "gateway did not connect and subscribe"
    return service


@pytest.fixture
def gateway(broker: Broker) -> Iterator[GatewayService]:
    service = start_gateway(gateway_config(broker))
    yield service
    service.stop()


def props(
    image_id: str | None = None, response_topic: str | None = None, correlation: bytes | None = None
) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    if image_id is not None:
        p.UserProperty = [("image-id", image_id)]
    if response_topic is not None:
        p.ResponseTopic = response_topic
    if correlation is not None:
        p.CorrelationData = correlation
    return p


def body(message: Any) -> dict[str, Any]:
    return dict(json.loads(message.payload))


def test_mqtt5_request_gets_its_verdict_on_the_response_topic(
    gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    reply = "colposcopy/clinic-a/eva-07/replies/x1"
    recorder.publish("colposcopy/clinic-a/eva-07/images", sharp_jpeg, props("IMG-1", reply, b"\x00corr\xff"))
    [message] = recorder.wait_for(1, reply)
    assert message.properties.CorrelationData == b"\x00corr\xff"
    verdict = body(message)
    assert verdict["schema"] == "colposcopy-gateway/verdict/1"
    assert (verdict["image_id"], verdict["site"], verdict["device"]) == ("IMG-1", "clinic-a", "eva-07")
    assert verdict["verdict"] == "accept", verdict
    assert verdict["focus"]["label"] == "sharp"
    assert verdict["cervix"]["found"] is True and len(verdict["cervix"]["box"]) == 4
    assert verdict["backend"] == "classical"
    assert {"decode", "inference", "total"} <= verdict["timings_ms"].keys()
    # nothing went to the default verdict topic, and no recapture request for an accepted photo
    assert recorder.wait_for(1, "colposcopy/clinic-a/eva-07/verdicts", timeout=0.5) == []
    assert recorder.wait_for(1, "colposcopy/clinic-a/eva-07/recapture", timeout=0.1) == []


def test_blurred_photo_gets_recapture_and_a_recapture_request(
    gateway: GatewayService, recorder: Recorder, blurred_jpeg: bytes
) -> None:
    recorder.publish("colposcopy/clinic-a/eva-07/images", blurred_jpeg, props("IMG-2"))
    [message] = recorder.wait_for(1, "colposcopy/clinic-a/eva-07/verdicts")
    verdict = body(message)
    assert verdict["verdict"] == "recapture" and verdict["reasons"] == ["out_of_focus", "defocus"], verdict
    assert verdict["focus"]["label"] == "not_sharp"
    [request] = recorder.wait_for(1, "colposcopy/clinic-a/eva-07/recapture")
    recapture = body(request)
    assert recapture["schema"] == "colposcopy-gateway/recapture/1"
    assert recapture["image_id"] == "IMG-2" and recapture["reasons"] == ["out_of_focus", "defocus"]
    assert recapture["guidance"] == ["Tap the cervix to focus before taking the photo: it is out of focus."]
    assert recapture["expires_at"]
    assert 0 < request.properties.MessageExpiryInterval <= 120


def test_garbage_gets_undecodable_and_the_gateway_keeps_serving(
    gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    recorder.publish("colposcopy/s/d/images", b"not a photo at all", props("junk"))
    recorder.publish("colposcopy/s/d/images", sharp_jpeg[: len(sharp_jpeg) // 2], props("half"))
    recorder.publish("colposcopy/s/d/images", b"", props("empty"))
    recorder.publish("colposcopy/s/d/images", sharp_jpeg, props("good"))
    verdicts = {v["image_id"]: v for v in map(body, recorder.wait_for(4, "colposcopy/s/d/verdicts"))}
    assert set(verdicts) == {"junk", "half", "empty", "good"}
    for image_id in ("junk", "half", "empty"):
        assert (verdicts[image_id]["verdict"], verdicts[image_id]["reasons"]) == ("error", ["undecodable"])
        assert verdicts[image_id]["focus"] is None and verdicts[image_id]["detail"]
    assert verdicts["good"]["verdict"] == "accept"


def publish_mqtt311(broker: Broker, *messages: tuple[str, bytes]) -> None:
    """Publish as an MQTT 3.1.1 device (no properties), QoS 1, each acknowledged by the broker."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="old-device", protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_mqtt311_device_puts_the_image_id_in_the_topic(
    broker: Broker, gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    publish_mqtt311(broker, ("colposcopy/s/old/images/photo-311", sharp_jpeg))
    [message] = recorder.wait_for(1, "colposcopy/s/old/verdicts")
    assert body(message)["image_id"] == "photo-311"


def test_mqtt311_device_with_an_invalid_id_in_the_topic_is_answered_bad_image_id(
    broker: Broker, gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    publish_mqtt311(
        broker,
        ("colposcopy/s/old/images/photo 311\u00e9", sharp_jpeg),
        ("colposcopy/s/old/images/-dash", b"not even a photo"),
    )
    got = [body(m) for m in recorder.wait_for(2, "colposcopy/s/old/verdicts")]
    assert [(v["verdict"], v["reasons"]) for v in got] == [("error", ["bad_image_id"])] * 2
    assert [v["image_id"] for v in got] == [derive_image_id(sharp_jpeg), derive_image_id(b"not even a photo")]
    assert "the image id in the topic 'photo 311\\xe9' is not an id" in got[0]["detail"]
    assert "'-dash'" in got[1]["detail"]


def test_the_image_id_property_wins_over_the_id_in_the_topic(
    gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    recorder.publish("colposcopy/s/d/images/topic-id", sharp_jpeg, props("property-id"))
    recorder.publish("colposcopy/s/d/images/bad topic id", sharp_jpeg, props("property-id-2"))
    got = [body(m) for m in recorder.wait_for(2, "colposcopy/s/d/verdicts")]
    assert sorted((v["image_id"], v["verdict"]) for v in got) == [
        ("property-id", "accept"),
        ("property-id-2", "accept"),
    ]


def test_photo_without_an_id_gets_a_stable_derived_one(
    gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    recorder.publish("colposcopy/s/d/images", sharp_jpeg, props())
    [message] = recorder.wait_for(1, "colposcopy/s/d/verdicts")
    assert body(message)["image_id"] == derive_image_id(sharp_jpeg)


def test_bad_image_id_property_is_an_error_verdict(
    gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    recorder.publish("colposcopy/s/d/images", sharp_jpeg, props("../../etc/passwd", correlation=b"c1"))
    [message] = recorder.wait_for(1, "colposcopy/s/d/verdicts")
    verdict = body(message)
    assert (verdict["verdict"], verdict["reasons"]) == ("error", ["bad_image_id"])
    assert verdict["image_id"] == derive_image_id(sharp_jpeg)
    assert message.properties.CorrelationData == b"c1"


def test_response_topic_of_another_device_is_refused(
    gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    recorder.publish("colposcopy/s/a/images", sharp_jpeg, props("p1", "colposcopy/s/b/verdicts"))
    recorder.publish("colposcopy/s/a/images", sharp_jpeg, props("p2", "colposcopy/s/a/images"))
    got = recorder.wait_for(2, "colposcopy/s/a/verdicts")
    assert sorted(body(m)["image_id"] for m in got) == ["p1", "p2"]
    assert recorder.wait_for(1, "colposcopy/s/b/", timeout=0.5) == []
    assert [m.topic for m in recorder.messages if m.topic.startswith("colposcopy/s/a/images")] == [
        "colposcopy/s/a/images",
        "colposcopy/s/a/images",
    ]  # only our two photos: the gateway published nothing on an image topic


def test_topics_outside_the_contract_are_dropped(
    gateway: GatewayService, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    recorder.publish("colposcopy/gateways/d/images", sharp_jpeg, props("x"))
    recorder.publish("colposcopy/s/" + "d" * 80 + "/images", sharp_jpeg, props("y"))
    recorder.publish("colposcopy/s/ok/images", sharp_jpeg, props("z"))
    [message] = recorder.wait_for(1, "colposcopy/s/ok/verdicts")
    assert body(message)["image_id"] == "z"
    verdict_topics = [m.topic for m in recorder.messages if m.topic.endswith("/verdicts")]
    assert verdict_topics == ["colposcopy/s/ok/verdicts"]


def test_availability_is_retained_online_then_offline(broker: Broker, recorder: Recorder) -> None:
    service = start_gateway(gateway_config(broker))
    [online] = recorder.wait_for(1, "colposcopy/gateways/gw-test/status")
    status = body(online)
    assert (status["state"], status["backend"], status["gateway_id"]) == ("online", "classical", "gw-test")
    assert status["schema"] == "colposcopy-gateway/status/1" and status["version"]
    service.stop()
    got = recorder.wait_for(2, "colposcopy/gateways/gw-test/status")
    assert [body(m)["state"] for m in got] == ["online", "offline"]


def test_overload_answers_busy_and_every_photo_gets_one_verdict(
    broker: Broker, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    service = start_gateway(
        gateway_config(broker, processing={"workers": 1, "queue_size": 1, "busy_retry_after_ms": 1500})
    )
    try:
        for n in range(12):
            recorder.client.publish("colposcopy/s/d/images", sharp_jpeg, qos=1, properties=props(f"f{n}"))
        got = [body(m) for m in recorder.wait_for(12, "colposcopy/s/d/verdicts", timeout=60)]
    finally:
        service.stop()
    assert sorted(v["image_id"] for v in got) == sorted(f"f{n}" for n in range(12))
    busy = [v for v in got if v["reasons"] == ["busy"]]
    judged = [v for v in got if v["verdict"] == "accept"]
    assert busy and judged and len(busy) + len(judged) == 12
    assert all(v["verdict"] == "error" and v["retry_after_ms"] == 1500 for v in busy)


def test_onnxruntime_backend_end_to_end_and_degraded_status_is_republished(
    broker: Broker, recorder: Recorder, sharp_jpeg: bytes, tmp_path: Any
) -> None:
    """Real ONNX models through ONNX Runtime behind the broker; a backend change republishes the status."""
    from tests.onnx_models import detector_and_classifier

    manifest = detector_and_classifier(tmp_path / "models")
    config = gateway_config(broker, backend="onnxruntime", models={"manifest": str(manifest)})
    judge = build_judge(config)
    service = GatewayService(config, judge)
    service.start()
    assert service.connected.wait(10)
    try:
        [online] = recorder.wait_for(1, "colposcopy/gateways/gw-test/status")
        assert (body(online)["state"], body(online)["backend"]) == ("online", "onnxruntime")
        assert set(body(online)["models"]) == {"cervix-detector", "focus-classifier"}
        assert body(online).get("detail") is None
        recorder.publish("colposcopy/s/d/images", sharp_jpeg, props("onnx-1"))
        [verdict] = recorder.wait_for(1, "colposcopy/s/d/verdicts")
        assert (body(verdict)["image_id"], body(verdict)["backend"]) == ("onnx-1", "onnxruntime")
        assert body(verdict)["verdict"] in {"accept", "recapture"}
        judge.pipeline.slot.degrade("building TensorRT engines failed (test); staying on onnxruntime")
        got = recorder.wait_for(2, "colposcopy/gateways/gw-test/status")
        degraded = body(got[1])
        assert (degraded["state"], degraded["backend"]) == ("degraded", "onnxruntime")
        assert degraded["detail"] == "building TensorRT engines failed (test); staying on onnxruntime"
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("motion_bias", "reason", "guidance"),
    [
        (3.0, "motion_blur", "Hold the phone still while the photo is taken: movement blurred it."),
        (-3.0, "defocus", "Tap the cervix to focus before taking the photo: it is out of focus."),
    ],
)
def test_a_focus_model_with_a_blur_type_output_sets_the_reason_and_guidance(
    broker: Broker,
    recorder: Recorder,
    blurred_jpeg: bytes,
    tmp_path: Any,
    motion_bias: float,
    reason: str,
    guidance: str,
) -> None:
    """The learned blur type (issue 12, item 6) reaches the verdict and the recapture request over MQTT; the same
    photo gets motion_blur from one model and defocus from the other, whatever the classical measure says."""
    from tests.onnx_models import typed_classifier, typed_entry, write_manifest

    folder = tmp_path / "models"
    typed = typed_classifier(folder / "typed.onnx", 16, -3.0, motion_bias)  # not sharp: raw 0.047
    manifest = write_manifest(folder, [typed_entry(typed)])
    service = start_gateway(gateway_config(broker, backend="onnxruntime", models={"manifest": str(manifest)}))
    try:
        recorder.publish("colposcopy/s/d/images", blurred_jpeg, props("typed-1"))
        [message] = recorder.wait_for(1, "colposcopy/s/d/verdicts", timeout=60)
        [request] = recorder.wait_for(1, "colposcopy/s/d/recapture", timeout=30)
    finally:
        service.stop()
    verdict = body(message)
    assert (verdict["image_id"], verdict["backend"], verdict["verdict"]) == ("typed-1", "onnxruntime", "recapture")
    assert verdict["models"] == {"classical": verdict["models"]["classical"], "focus-classifier": "0.0.2"}
    assert verdict["reasons"] == ["out_of_focus", reason], verdict
    assert body(request)["reasons"] == ["out_of_focus", reason] and body(request)["guidance"] == [guidance]


def test_busy_answers_are_waited_out_by_the_client_not_counted_as_failed_attempts(
    broker: Broker, sharp_jpeg: bytes
) -> None:
    """Ten devices at once against one worker and a queue of one: most first answers are busy; with no retries
    for unanswered attempts, every device still gets its photo judged within the deadline."""
    from gateway.client import GatewayClient

    service = start_gateway(
        gateway_config(broker, processing={"workers": 1, "queue_size": 1, "busy_retry_after_ms": 300})
    )
    got: dict[int, Any] = {}

    def device(n: int) -> None:
        with GatewayClient(broker.url, site="s", device=f"d{n}") as client:
            got[n] = client.submit(sharp_jpeg, image_id=f"b{n}", timeout_s=60, retries=0, deadline_s=120)

    threads = [threading.Thread(target=device, args=(n,)) for n in range(10)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        busy = service._metrics.registry.get_sample_value(
            "colpo_gateway_verdict_reasons_total", {"outcome": "error", "reason": "busy"}
        )
    finally:
        service.stop()
    assert busy and busy >= 1, "the gateway never answered busy: nothing was tested"
    assert sorted(got) == list(range(10))
    assert all((v.image_id, v.verdict) == (f"b{n}", "accept") for n, v in got.items())


def test_the_gateway_declares_a_maximum_packet_size_from_its_payload_limit(
    broker: Broker, recorder: Recorder, sharp_jpeg: bytes
) -> None:
    """The test broker sets no max_packet_size. A photo over the payload limit but within the declared header room
    is answered too_large; a far larger one is never delivered to the gateway (so never held in its memory)."""
    limit = 2 << 20
    declared = maximum_packet_size(limit)
    assert declared == 3 << 20
    service = start_gateway(gateway_config(broker, decode={"max_payload_bytes": limit}))
    try:
        recorder.publish("colposcopy/s/d/images", b"\xff\xd8" + bytes(limit + 1000), props("over"))
        recorder.publish("colposcopy/s/d/images", b"\xff\xd8" + bytes(declared + 1000), props("huge"))
        recorder.publish("colposcopy/s/d/images", sharp_jpeg, props("fine"))
        got = recorder.wait_for(2, "colposcopy/s/d/verdicts", timeout=30)
        time.sleep(1.0)  # a verdict for "huge" would have come before the one for "fine"
        got = recorder.wait_for(3, "colposcopy/s/d/verdicts", timeout=0.1)
        received = service._metrics.registry.get_sample_value("colpo_gateway_photos_received_total")
    finally:
        service.stop()
    assert [(body(m)["image_id"], body(m)["reasons"]) for m in got] == [("over", ["too_large"]), ("fine", [])]
    assert received == 2
