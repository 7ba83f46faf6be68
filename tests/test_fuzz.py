"""Hostile input, tried systematically (hypothesis): topics, MQTT properties, photo bytes.

(a) topic parsing and the response-topic rule: only ``TopicError`` or a parse whose ids obey the id rule;
(b) the gateway's handling of whole messages, with MQTT 5 properties encoded and decoded by paho's own wire
    codec (what a device can really make the gateway receive): ``transport._incoming`` then
    ``GatewayService._accept`` with the real queue, workers and judge, the broker replaced by a recorder:
    every photo on an image topic gets exactly one verdict, on the right topic, with its correlation data;
(c) photo bytes through the whole judge (decode, then assess): an error verdict with a reason or a judged
    photo, never ``internal``, never a hang; mutated JPEG/PNG files and valid files of odd geometry and formats.
    ``decode`` alone is fuzzed in tests/test_decode.py, which also has the hand-made special files
    (bombs, CMYK/YCCK and 12-bit JPEG, 16-bit/alpha/palette PNG, EXIF orientations, truncations).

Kept to ~200-300 examples a property (the file runs in well under 30 s on two cores); no example database,
so every run tries fresh examples.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MalformedPacket, Properties

from gateway.config import GatewayConfig, parse_config
from gateway.judge import Judge, PhotoRequest, build_judge
from gateway.protocol import (
    MAX_RESPONSE_TOPIC_BYTES,
    RESERVED_SITE,
    RecaptureMessage,
    TopicError,
    Topics,
    VerdictMessage,
    derive_image_id,
    is_valid_id,
    quote_id,
)
from gateway.service import GatewayService
from gateway.transport import IncomingPhoto, Outgoing, _incoming
from tests.test_decode import _SEEDS, _exif_app1, _jpeg_bomb, _mutated, _png_bomb, _with_app1

TOPICS = Topics("colposcopy")
FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------- strategies

# What paho can hand us as a str: valid UTF-8 without surrogates (paho refuses D800-DFFF, NUL and U+FEFF in
# properties with MalformedPacket; Mosquitto refuses malformed UTF-8 in topics before it forwards anything).
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
_VALID_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
_ODD_LEVELS = (
    "", "+", "#", "$SYS", "$share", RESERVED_SITE, "images", "verdicts", "replies", "recapture", ".", "..", "-a",
    "_a", ".hidden", "a", "clinic-a", "eva-07", " ", "a b", "a\tb", "\u00e9", "\ufb01", "\u202e", "\uff0b",
    "\u2215", "x" * 64, "x" * 65, "a" * 1000, "IMG_0042.jpg", "a+b", "a#", "\x7f",
)  # fmt: skip
_LEVEL = st.one_of(
    st.sampled_from(_ODD_LEVELS),
    _VALID_ID,
    st.from_regex(r"[A-Za-z0-9._+#$/ -]{0,70}", fullmatch=True),
    _TEXT,
)
_BYTESISH = st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace"))
_TOPIC = st.one_of(
    _TEXT,
    _BYTESISH,
    st.lists(_LEVEL, max_size=7).map("/".join),
    st.lists(_LEVEL, min_size=1, max_size=6).map(lambda levels: "colposcopy/" + "/".join(levels)),
    st.builds(
        lambda site, device, tail: f"colposcopy/{site}/{device}/images{tail}",
        _LEVEL,
        _LEVEL,
        st.one_of(st.sampled_from(["", "/", "//", "/+", "/#", "/a/b"]), _LEVEL.map(lambda level: "/" + level)),
    ),
)


def _check_parse(topic: str) -> Any:
    """parse_image_topic's contract: TopicError, or ids that obey the id rule and rebuild the topic exactly."""
    try:
        parsed = TOPICS.parse_image_topic(topic)
    except TopicError as exc:
        assert str(exc)
        event("TopicError")
        return None
    event("parsed")
    assert is_valid_id(parsed.site) and is_valid_id(parsed.device) and parsed.site != RESERVED_SITE
    rebuilt = TOPICS.images(parsed.site, parsed.device)
    if parsed.image_id is not None:
        assert is_valid_id(parsed.image_id) and parsed.invalid_image_id is None
        rebuilt += "/" + parsed.image_id
    elif parsed.invalid_image_id is not None:  # the 3.1.1 form with an invalid id: answered bad_image_id
        assert not is_valid_id(parsed.invalid_image_id)
        rebuilt += "/" + parsed.invalid_image_id
    assert rebuilt == topic
    return parsed


# ----------------------------------------------------------------------------------------------- (a) topics


@FUZZ
@given(topic=_TOPIC)
def test_fuzz_image_topic_parsing(topic: str) -> None:
    _check_parse(topic)


@FUZZ
@given(site=_LEVEL, device=_LEVEL, image_id=st.none() | _LEVEL)
def test_fuzz_image_topic_parsing_near_the_contract(site: str, device: str, image_id: str | None) -> None:
    topic = f"colposcopy/{site}/{device}/images" + ("" if image_id is None else f"/{image_id}")
    parsed = _check_parse(topic)
    expected_ok = site != RESERVED_SITE and all(is_valid_id(v) for v in (site, device)) and "/" not in (image_id or "")
    assert (parsed is not None) == expected_ok, topic
    if parsed is not None and image_id is not None:  # a valid id is the image id; any other one is answered
        assert (parsed.image_id, parsed.invalid_image_id) == (
            (image_id, None) if is_valid_id(image_id) else (None, image_id)
        )


def _in_namespace(site: str, device: str, suffix: str) -> str:
    return TOPICS.device_namespace(site, device) + suffix


@FUZZ
@given(
    site=_VALID_ID,
    device=_VALID_ID,
    other=st.tuples(_VALID_ID, _VALID_ID),
    response=st.one_of(_TOPIC, st.lists(_LEVEL, max_size=5).map("/".join)),
    own=st.booleans(),
)
def test_fuzz_response_topic_rule(site: str, device: str, other: tuple[str, str], response: str, own: bool) -> None:
    topic = _in_namespace(site, device, response) if own else response
    allowed = TOPICS.response_topic_allowed(topic, site, device)
    event(f"allowed={allowed}")
    if not allowed:
        return
    namespace = TOPICS.device_namespace(site, device)
    assert topic.startswith(namespace) and len(topic.encode()) <= MAX_RESPONSE_TOPIC_BYTES
    rest = topic[len(namespace) :].split("/")
    assert rest[0] != "images" and all(level and not {"+", "#", "\0"} & set(level) for level in rest)
    with pytest.raises(TopicError):  # a topic the gateway answers on is never one it reads photos from
        TOPICS.parse_image_topic(topic)
    if other != (site, device):  # one response topic belongs to one device only
        assert not TOPICS.response_topic_allowed(topic, *other)


# ----------------------------------------------------------------------------------------------- (b) messages


class RecordingTransport:
    """Stands in for MqttTransport: records what the service publishes and acknowledges; the broker has every
    publication at once."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.published: list[Outgoing] = []
        self.acked: list[IncomingPhoto] = []
        self.cond = threading.Condition()

    def start(self) -> None:
        self.connected.set()

    def publish(self, message: Outgoing, on_delivered: Callable[[], None] | None = None) -> None:
        with self.cond:
            self.published.append(message)
            self.cond.notify_all()
        if on_delivered is not None:
            on_delivered()

    def ack(self, photo: IncomingPhoto) -> None:
        with self.cond:
            self.acked.append(photo)
            self.cond.notify_all()

    def unsubscribe(self, topics: tuple[str, ...], timeout_s: float = 2.0) -> bool:
        return False

    def stop(self, last: Outgoing | None = None, timeout_s: float = 5.0) -> None:
        if last is not None:
            self.publish(last)

    def take(self, count: int, timeout: float = 20.0) -> list[Outgoing]:
        """Wait for ``count`` publications (beyond those already taken) and return them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.published) < count and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            got, self.published = self.published[:count], self.published[count:]
            return got

    def take_acks(self, timeout: float = 5.0) -> list[IncomingPhoto]:
        """The acknowledgements so far (waiting up to ``timeout`` for the first one)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.acked and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            got, self.acked = self.acked, []
            return got


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return bytes(buf.tobytes())


_SMALL_JPEG = _encode(".jpg", _image(48, 64))
_PAYLOADS = st.sampled_from(
    [_SMALL_JPEG, _encode(".png", _image(40, 30, 1)), _SMALL_JPEG[: len(_SMALL_JPEG) // 2], b"", b"\x00" * 64]
)
_USER_KEYS = st.one_of(st.sampled_from(["image-id", "Image-Id", "image-id ", " image-id", "", "x" * 300]), _TEXT)
_USER_VALUES = st.one_of(_VALID_ID, _LEVEL, st.text(max_size=600).filter(lambda s: "\0" not in s))
_SITES = st.one_of(st.sampled_from(["clinic-a", "s", RESERVED_SITE]), _LEVEL)
_DEVICES = st.one_of(st.sampled_from(["eva-07", "d"]), _LEVEL)


@st.composite
def _messages(draw: st.DrawFn) -> tuple[mqtt.MQTTMessage, str | None]:
    """A received PUBLISH: topic, payload, and properties that went through paho's encoder and decoder."""
    kind = draw(st.integers(0, 9))  # 7 in 10 on a valid image topic, 2 near it, 1 anything
    site, device = draw(_VALID_ID if kind < 7 else _SITES), draw(_VALID_ID if kind < 7 else _DEVICES)
    if kind < 7:
        tail = draw(st.sampled_from(["images", "images"]) | _VALID_ID.map(lambda image_id: f"images/{image_id}"))
    else:
        tail = draw(st.sampled_from(["images", "images/"]) | _LEVEL.map(lambda level: f"images/{level}") | _LEVEL)
    topic = f"colposcopy/{site}/{device}/{tail}" if kind < 9 else draw(_TOPIC)
    props = Properties(PacketTypes.PUBLISH)
    pairs = draw(st.lists(st.tuples(_USER_KEYS, _USER_VALUES), max_size=4))
    if draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), ("image-id", draw(_USER_VALUES)))
    if pairs:
        props.UserProperty = pairs
    response = draw(
        st.none()
        | _TOPIC
        | st.lists(_LEVEL, max_size=4).map(lambda levels: f"colposcopy/{site}/{device}/" + "/".join(levels))
        | st.sampled_from(
            ["colposcopy/clinic-a/eva-08/verdicts", f"colposcopy/{site}/{device}/replies/r1", f"colposcopy/{site}/x"]
        )
    )
    if response is not None:
        props.ResponseTopic = response
    correlation = draw(st.none() | st.binary(max_size=300))
    if correlation is not None:
        props.CorrelationData = correlation
    if draw(st.booleans()):
        props.PayloadFormatIndicator = 1  # claims a UTF-8 payload: a JPEG is not
        props.ContentType = draw(_TEXT)
    try:
        received = Properties(PacketTypes.PUBLISH)
        received.unpack(props.pack())
    except MalformedPacket:
        assume(False)  # paho itself would refuse this packet: it never reaches the gateway
    msg = mqtt.MQTTMessage(mid=1, topic=topic.encode())
    msg.payload = draw(_PAYLOADS)
    msg.properties = received
    return msg, response


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayService, RecordingTransport]]:
    sections = {
        "gateway_id": "gw-fuzz",
        "backend": "classical",
        "processing": {"workers": 1},
        "metrics": {"enabled": False},
        "store": {"path": str(tmp_path_factory.mktemp("fuzz-store") / "verdicts.sqlite3")},
    }
    config: GatewayConfig = parse_config("", "<fuzz>", sections)
    svc = GatewayService(config, build_judge(config))
    transport = RecordingTransport()
    svc._transport = transport  # type: ignore[assignment]  # never connects to a broker
    svc.start()
    transport.take(0)
    yield svc, transport
    svc.stop()


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=_messages())
def test_fuzz_every_photo_gets_exactly_one_reply(
    service: tuple[GatewayService, RecordingTransport], message: tuple[mqtt.MQTTMessage, str | None]
) -> None:
    svc, transport = service
    msg, response = message
    photo = _incoming(msg)
    assert photo.payload == bytes(msg.payload) and photo.topic == msg.topic
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in photo.user_properties)
    svc._accept(photo)  # must not raise, whatever the device sent

    parsed = _check_parse(msg.topic)
    if parsed is None:  # outside the contract: dropped (and acknowledged), nothing published
        event("dropped")
        assert transport.take_acks() == [photo]
        assert transport.take(1, timeout=0.02) == []
        return
    [reply] = transport.take(1)
    verdict = VerdictMessage.model_validate_json(reply.payload)
    event(f"{verdict.verdict}: {verdict.reasons}")
    own_verdicts = TOPICS.verdicts(parsed.site, parsed.device)
    if response is not None and TOPICS.response_topic_allowed(response, parsed.site, parsed.device):
        assert reply.topic == response
    else:
        assert reply.topic == own_verdicts
    assert reply.correlation_data == getattr(msg.properties, "CorrelationData", None)  # echoed unchanged
    assert (verdict.site, verdict.device) == (parsed.site, parsed.device)
    assert is_valid_id(verdict.image_id)
    claimed = next((v for k, v in photo.user_properties if k == "image-id"), None)
    sent = claimed if claimed is not None else parsed.invalid_image_id  # the property wins over the topic's id
    if sent is not None and not is_valid_id(sent):
        assert (verdict.verdict, verdict.reasons) == ("error", ["bad_image_id"])
        assert verdict.image_id == derive_image_id(photo.payload)
        assert verdict.detail and quote_id(sent) in verdict.detail
    else:
        assert verdict.image_id == (claimed or parsed.image_id or derive_image_id(photo.payload))
        assert "internal" not in verdict.reasons and "bad_image_id" not in verdict.reasons
    if verdict.verdict == "recapture":
        [request] = transport.take(1)
        assert request.topic == TOPICS.recapture(parsed.site, parsed.device)
        assert RecaptureMessage.model_validate_json(request.payload).image_id == verdict.image_id
    assert transport.take_acks() == [photo]  # acknowledged exactly once
    assert transport.take(1, timeout=0.02) == []  # and nothing else
    with pytest.raises(TopicError):  # the gateway never publishes where it reads photos
        TOPICS.parse_image_topic(reply.topic)


# ----------------------------------------------------------------------------------------------- (c) photos


@pytest.fixture(scope="module")
def judge() -> Judge:
    return build_judge(parse_config("", "<fuzz>", {"backend": "classical"}))


@st.composite
def _odd_images(draw: st.DrawFn) -> bytes:
    """Valid JPEG/PNG files of odd geometry, depth and channels (tiny, one pixel wide, very long, flat)."""
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, 48), st.integers(1, 48)),
            st.sampled_from([(1, 1), (1, 3000), (3000, 1), (2, 2000), (8, 8), (7, 9), (4000, 3)]),
        )
    )
    kind = draw(st.sampled_from(["bgr", "gray", "bgra", "gray16", "bgr16", "flat"]))
    fmt = draw(st.sampled_from(["jpeg", "png"]) if kind in ("bgr", "gray", "flat") else st.just("png"))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    h, w = shape
    if kind == "flat":
        image: np.ndarray = np.full((h, w, 3), draw(st.integers(0, 255)), np.uint8)
    elif kind in ("gray16", "bgr16"):
        image = rng.integers(0, 65536, (h, w) if kind == "gray16" else (h, w, 3), dtype=np.uint16)
    else:
        image = rng.integers(0, 256, {"bgr": (h, w, 3), "gray": (h, w), "bgra": (h, w, 4)}[kind], dtype=np.uint8)
    if fmt == "png":
        return _encode(".png", image)
    payload = _encode(".jpg", image, cv2.IMWRITE_JPEG_QUALITY, draw(st.integers(1, 100)))
    orientation = draw(st.integers(0, 9))
    return _with_app1(payload, _exif_app1(orientation)) if orientation else payload


_OVERSIZED = b"\xff\xd8\xff\xe0" + bytes(16 * 1024 * 1024)  # over decode.max_payload_bytes
_PHOTOS = st.one_of(
    _mutated(),
    _odd_images(),
    st.sampled_from([*_SEEDS, _png_bomb(), _jpeg_bomb(), _OVERSIZED, b""]),
    st.binary(max_size=64),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_PHOTOS)
def test_fuzz_judge_gives_a_verdict_for_any_bytes(judge: Judge, payload: bytes) -> None:
    started = time.monotonic()
    judged = judge.judge(PhotoRequest("s", "d", "img-1", payload, in_run=False))
    assert time.monotonic() - started < 10, "one photo took more than 10 s"
    verdict = judged.verdict
    doc = json.loads(verdict.to_json())
    event(f"{doc['verdict']}: {doc['reasons']}")
    if doc["verdict"] == "error":
        assert doc["reasons"] in (["undecodable"], ["too_large"]), doc  # never "internal"
        assert doc["detail"] and doc["focus"] is None and doc["cervix"] is None
        assert judged.recapture is None
    else:
        assert doc["focus"] is not None and doc["cervix"] is not None and doc["exposure"] is not None
        assert 0.0 <= doc["focus"]["sharp_probability"] <= 1.0
        box = doc["cervix"]["box"]
        if box is not None:
            assert len(box) == 4 and all(0.0 <= v <= 1.0 for v in box) and box[0] <= box[2] and box[1] <= box[3]
        assert (judged.recapture is not None) == (doc["verdict"] == "recapture")
