"""The published MQTT contract: the committed JSON Schemas match the models, the AsyncAPI document points at them,
and what the gateway really publishes over a real Mosquitto validates against them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import parse_config
from gateway.judge import build_judge
from gateway.protocol import TopicError, Topics, json_schemas, main, schema_text
from gateway.scenes import SceneSpec, encode_jpeg, render
from gateway.service import GatewayService
from tests.conftest import Broker, Recorder

DOCS = Path(__file__).resolve().parents[1] / "docs"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((DOCS / "schemas" / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("name", ["verdict.json", "recapture.json", "status.json"])
def test_committed_schema_is_what_the_models_generate(name: str) -> None:
    committed = (DOCS / "schemas" / name).read_text()
    assert committed == schema_text(json_schemas()[name]), (
        "regenerate: python -m gateway.protocol --write-schemas docs/schemas"
    )


def test_schemas_are_regenerated_by_the_command(tmp_path: Path) -> None:
    assert main(["--write-schemas", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recapture.json", "status.json", "verdict.json"]
    for path in tmp_path.iterdir():
        assert path.read_text() == (DOCS / "schemas" / path.name).read_text()


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_asyncapi_document_references_the_schemas_and_resolves() -> None:
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    found = refs(doc)
    assert {"./schemas/verdict.json", "./schemas/recapture.json", "./schemas/status.json"} <= set(found)
    for ref in found:
        if ref.startswith("#/"):
            node = doc
            for part in ref[2:].split("/"):
                node = node[part]  # KeyError: a dangling reference
        else:
            assert (DOCS / ref).is_file(), ref
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert {
        "colposcopy/{site}/{device}/images",
        "colposcopy/{site}/{device}/images/{imageId}",
        "colposcopy/{site}/{device}/verdicts",
        "colposcopy/{site}/{device}/recapture",
        "colposcopy/gateways/{gatewayId}/status",
    } <= addresses
    for operation in doc["operations"].values():
        assert operation["channel"]["$ref"].removeprefix("#/channels/") in doc["channels"]


def test_published_messages_validate_against_the_schemas(broker: Broker, recorder: Recorder, tmp_path: Path) -> None:
    config = parse_config(
        "",
        "<test>",
        {
            "gateway_id": "gw-contract",
            "backend": "classical",
            "broker": {"url": broker.url},
            "store": {"path": str(tmp_path / "verdicts.sqlite3")},
            "metrics": {"enabled": False},
        },
    )
    service = GatewayService(config, build_judge(config))
    service.start()
    assert service.connected.wait(10)
    sharp = encode_jpeg(render(SceneSpec(width=1600, height=1200, seed=1)).image)
    blurred = encode_jpeg(render(SceneSpec(width=1600, height=1200, blur="defocus", blur_px=9, seed=2)).image)
    try:
        for image_id, photo in (("sharp", sharp), ("blurred", blurred), ("truncated", sharp[: len(sharp) // 2])):
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("image-id", image_id)]
            recorder.publish("colposcopy/s/d/images", photo, props)
        verdicts = {
            v["image_id"]: v for v in (json.loads(m.payload) for m in recorder.wait_for(3, "colposcopy/s/d/verdicts"))
        }
        [request] = recorder.wait_for(1, "colposcopy/s/d/recapture")
    finally:
        service.stop()
    statuses = [json.loads(m.payload) for m in recorder.wait_for(2, "colposcopy/gateways/gw-contract/status")]

    assert (verdicts["sharp"]["verdict"], verdicts["blurred"]["verdict"]) == ("accept", "recapture")
    assert (verdicts["truncated"]["verdict"], verdicts["truncated"]["reasons"]) == ("error", ["undecodable"])
    assert [s["state"] for s in statuses] == ["online", "offline"]
    for verdict in verdicts.values():
        validator("verdict.json").validate(verdict)
    validator("recapture.json").validate(json.loads(request.payload))
    for status in statuses:
        validator("status.json").validate(status)


def test_schemas_reject_what_the_contract_forbids_and_allow_added_fields() -> None:
    status = {
        "schema": "colposcopy-gateway/status/1",
        "gateway_id": "gw-1",
        "state": "online",
        "version": "0.1.0",
        "backend": "classical",
        "models": {},
        "since": "2026-11-25T10:00:00.000Z",
        "detail": None,
    }
    check = validator("status.json")
    check.validate({**status, "added_in_a_later_release": 1})  # fields may be added within a schema version
    assert not check.is_valid({**status, "state": "sleeping"})
    assert not check.is_valid({**status, "schema": "colposcopy-gateway/status/2"})
    assert not check.is_valid({k: v for k, v in status.items() if k != "gateway_id"})


# ------------------------------------------------------------ the AsyncAPI channels and the code's topic rules

TOPICS = Topics("colposcopy")


def asyncapi() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCS / "asyncapi.yaml").read_text()))


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        for part in node["$ref"].removeprefix("#/").split("/"):
            doc = doc[part]
        node = doc  # type: ignore[assignment]
    return node


def channel_parameters(doc: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    return {p: resolve(doc, spec) for p, spec in doc["channels"][name].get("parameters", {}).items()}


def channel_regex(doc: dict[str, Any], name: str, any_level: tuple[str, ...] = ()) -> re.Pattern[str]:
    """The channel's address as a regular expression, each parameter a named group matching its ``x-pattern``
    (those in ``any_level``: any one topic level)."""
    params = channel_parameters(doc, name)
    parts = re.split(r"\{(\w+)\}", doc["channels"][name]["address"])
    pattern = "".join(
        re.escape(part) if n % 2 == 0 else f"(?P<{part}>{'[^/]*' if part in any_level else params[part]['x-pattern']})"
        for n, part in enumerate(parts)
    )
    return re.compile(pattern)


def instances(doc: dict[str, Any], name: str, **fixed: str) -> list[str]:
    """The channel's address filled with its parameters' examples (``fixed`` ones as given)."""
    params = channel_parameters(doc, name)
    topics = [doc["channels"][name]["address"]]
    for param, spec in params.items():
        values = [fixed[param]] if param in fixed else spec["examples"]
        topics = [t.replace("{" + param + "}", v) for t in topics for v in values]
    return topics


def operations(doc: dict[str, Any], action: str, message: str | None = None) -> set[str]:
    """The channels of the operations with ``action`` (and carrying ``message``)."""
    names = set()
    for operation in doc["operations"].values():
        name = operation["channel"]["$ref"].removeprefix("#/channels/")
        messages = [m["$ref"] for m in doc["channels"][name]["messages"].values()]
        if operation["action"] == action and (message is None or f"#/components/messages/{message}" in messages):
            names.add(name)
    return names


_LEVELS = ["s", "d", "e", "replies", "verdicts", "images", "recapture", "status", "gateways", "x1", "", "+", "#"]
_LEVELS += ["a b", "caf\u00e9", "-x", "y" * 65]


def probe_topics() -> list[str]:
    """Topics in and around the device namespaces: every tail of 1 to 3 levels from an adversarial vocabulary."""
    tails = [[level] for level in _LEVELS]
    tails += [[a, b] for a in _LEVELS for b in _LEVELS[:12]]
    tails += [["replies", b, c] for b in _LEVELS for c in _LEVELS[:10]]
    heads = ["colposcopy/s/d", "colposcopy/s/e", "colposcopy/gateways/d", "colposcopy/s", "other/s/d"]
    return [f"{head}/{'/'.join(tail)}" for head in heads for tail in tails]


def test_asyncapi_channels_are_the_topics_the_code_builds_and_subscribes() -> None:
    doc = asyncapi()
    site, device = "clinic-a", "eva-07"
    assert instances(doc, "images", site=site, device=device) == [TOPICS.images(site, device)]
    assert instances(doc, "verdicts", site=site, device=device) == [TOPICS.verdicts(site, device)]
    assert instances(doc, "recapture", site=site, device=device) == [TOPICS.recapture(site, device)]
    assert instances(doc, "status", gatewayId="gw-1") == [TOPICS.status("gw-1")]
    # the gateway subscribes to exactly the channels it receives on, each parameter a single-level wildcard
    received = operations(doc, "receive")
    assert received == {"images", "imagesWithId"}
    subscribed = {re.sub(r"\{\w+\}", "+", doc["channels"][name]["address"]) for name in received}
    assert subscribed == set(TOPICS.image_subscriptions)
    # every example of every channel fits its own parameters' patterns
    for name in doc["channels"]:
        for topic in instances(doc, name):
            assert channel_regex(doc, name).fullmatch(topic), (name, topic)


def test_response_topics_the_code_accepts_are_exactly_the_asyncapi_reply_channels() -> None:
    doc = asyncapi()
    reply_channels = operations(doc, "send", "verdict")  # where verdicts go: the verdicts and replies channels
    assert reply_channels == {"verdicts", "replies"}
    assert {op["reply"]["channel"]["$ref"] for op in doc["operations"].values() if "reply" in op} <= {
        f"#/channels/{name}" for name in reply_channels
    }
    patterns = [channel_regex(doc, name) for name in reply_channels]
    others = [channel_regex(doc, name) for name in doc["channels"] if name not in reply_channels]
    for topic in probe_topics() + instances(doc, "replies", site="s", device="d"):
        documented = any(
            (m := p.fullmatch(topic)) is not None and (m["site"], m["device"]) == ("s", "d") for p in patterns
        )
        assert TOPICS.response_topic_allowed(topic, "s", "d") == documented, topic
        if documented:
            assert not any(p.fullmatch(topic) for p in others), topic  # never an image, recapture or status topic


def test_image_topics_the_code_answers_are_exactly_the_asyncapi_receive_channels() -> None:
    doc = asyncapi()
    strict = {name: channel_regex(doc, name) for name in ("images", "imagesWithId")}
    any_id = channel_regex(doc, "imagesWithId", any_level=("imageId",))
    for topic in probe_topics():
        try:
            parsed = TOPICS.parse_image_topic(topic)
        except TopicError:
            parsed = None
        if strict["images"].fullmatch(topic):
            assert parsed is not None and parsed.image_id is parsed.invalid_image_id is None, topic
        elif m := strict["imagesWithId"].fullmatch(topic):
            assert parsed is not None and parsed.image_id == m["imageId"], topic
        elif m := any_id.fullmatch(topic):  # the channel with an invalid id: answered bad_image_id
            assert parsed is not None and parsed.invalid_image_id == m["imageId"], topic
        else:
            assert parsed is None, topic
