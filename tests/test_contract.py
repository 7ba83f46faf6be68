"""The published MQTT contract: the committed JSON Schemas match the models, the AsyncAPI document points at them,
and what the gateway really publishes over a real Mosquitto validates against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import parse_config
from gateway.judge import build_judge
from gateway.protocol import json_schemas, main, schema_text
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
