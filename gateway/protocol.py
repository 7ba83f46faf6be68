"""The MQTT contract: topics, ids, and the JSON messages the gateway publishes.

Everything a device-app developer builds against lives here, so the README, the schemas and the code agree.
Messages are versioned by their ``schema`` field: fields may be added, never renamed or removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

VERDICT_SCHEMA = "colposcopy-gateway/verdict/1"
RECAPTURE_SCHEMA = "colposcopy-gateway/recapture/1"
STATUS_SCHEMA = "colposcopy-gateway/status/1"

RESERVED_SITE = "gateways"
"""The level under the prefix that holds gateway availability; never a site name."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Site, device and image ids: 1..64 characters of a safe set, no MQTT wildcards or separators."""
MAX_RESPONSE_TOPIC_BYTES = 256


class Outcome(str, Enum):
    """The closed set of verdicts: a new situation gets a new reason, never a new outcome."""

    ACCEPT = "accept"
    RECAPTURE = "recapture"
    ERROR = "error"


class Reason(str, Enum):
    """The vocabulary of reason codes (documented in the README). Reasons may be added (a device ignores one it
    does not know); the outcomes stay closed. ``out_of_focus`` always comes with its type, ``motion_blur`` or
    ``defocus``."""

    OUT_OF_FOCUS = "out_of_focus"
    MOTION_BLUR = "motion_blur"
    DEFOCUS = "defocus"
    BORDERLINE_FOCUS = "borderline_focus"
    CERVIX_NOT_FOUND = "cervix_not_found"
    TOO_DARK = "too_dark"
    OVEREXPOSED = "overexposed"
    RECAPTURE_LIMIT = "recapture_limit"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    BAD_IMAGE_ID = "bad_image_id"
    INTERNAL = "internal"
    POISON = "poison"


class TopicError(ValueError):
    """A topic that is not part of the contract; the message is logged and dropped."""


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def quote_id(value: str, limit: int = 64) -> str:
    """An id a device sent, fit to quote back in a verdict's ``detail``: in quotes, characters outside printable
    ASCII escaped (as Python's ``ascii`` does), cut to ``limit`` characters."""
    return ascii(value[:limit]) + (f" (cut, {len(value)} characters)" if len(value) > limit else "")


def derive_image_id(payload: bytes) -> str:
    """A stable id for a photo sent without one: the same bytes always get the same id."""
    return image_id_from_digest(hashlib.sha256(payload).hexdigest())


def image_id_from_digest(payload_sha256: str) -> str:
    """``derive_image_id`` from the payload's hex SHA-256, when that is already known."""
    return "sha256-" + payload_sha256[:32]


@dataclass(frozen=True)
class ImageTopic:
    site: str
    device: str
    image_id: str | None
    """Set only by the MQTT 3.1.1 form ``<prefix>/<site>/<device>/images/<image-id>``."""
    invalid_image_id: str | None = None
    """The id level of that form when it is not a valid id (answered ``bad_image_id``); ``image_id`` is then None."""


IMAGE_ID_PROPERTY = "image-id"


def resolve_image_id(parsed: ImageTopic, claimed: str | None, payload_sha256: str) -> tuple[str, str | None]:
    """The id a photo is answered under, and why it is refused (``bad_image_id``), or None when it is not.

    The ``image-id`` user property (``claimed``) wins over an id in the topic; with neither, and for an invalid
    id, the id derived from the payload."""
    if claimed is not None:
        sent, where = claimed, f"the {IMAGE_ID_PROPERTY} user property"
    elif parsed.invalid_image_id is not None:
        sent, where = parsed.invalid_image_id, "the image id in the topic"
    else:
        return parsed.image_id or image_id_from_digest(payload_sha256), None
    if is_valid_id(sent):
        return sent, None
    why = f"{where} {quote_id(sent)} is not an id: 1..64 characters of [A-Za-z0-9._-], starting with a letter or digit"
    return image_id_from_digest(payload_sha256), why


@dataclass(frozen=True)
class Topics:
    """Topic names under one configurable prefix (default ``colposcopy``)."""

    prefix: str = "colposcopy"

    @property
    def image_subscriptions(self) -> tuple[str, str]:
        """MQTT 5 form, then the MQTT 3.1.1 form that carries the image id as a topic level."""
        return f"{self.prefix}/+/+/images", f"{self.prefix}/+/+/images/+"

    @property
    def status_filter(self) -> str:
        """Every gateway's availability status: a gateway watches its peers (see ``GatewayService.stop``)."""
        return f"{self.prefix}/{RESERVED_SITE}/+/status"

    def shared(self, topic_filter: str, group: str | None) -> str:
        """``$share/<group>/<filter>``: the broker gives each message to one member of the group."""
        return f"$share/{group}/{topic_filter}" if group else topic_filter

    def status_gateway(self, topic: str) -> str | None:
        """The gateway id of a status topic, or None when ``topic`` is not one."""
        levels = topic.split("/")
        head = f"{self.prefix}/{RESERVED_SITE}/".split("/")[:-1]
        if len(levels) == len(head) + 2 and levels[: len(head)] == head and levels[-1] == "status":
            return levels[-2]
        return None

    def device_namespace(self, site: str, device: str) -> str:
        return f"{self.prefix}/{site}/{device}/"

    def images(self, site: str, device: str) -> str:
        return f"{self.prefix}/{site}/{device}/images"

    def verdicts(self, site: str, device: str) -> str:
        return f"{self.prefix}/{site}/{device}/verdicts"

    def recapture(self, site: str, device: str) -> str:
        return f"{self.prefix}/{site}/{device}/recapture"

    def status(self, gateway_id: str) -> str:
        return f"{self.prefix}/{RESERVED_SITE}/{gateway_id}/status"

    def parse_image_topic(self, topic: str) -> ImageTopic:
        """Split an incoming image topic into its ids, or raise TopicError saying why it is not one. An invalid id
        in the image id level is no TopicError: the photo is answered ``bad_image_id`` (``invalid_image_id``)."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise TopicError("outside the prefix")
        levels = topic[len(head) :].split("/")
        if len(levels) not in (3, 4) or levels[2] != "images":
            raise TopicError("not <site>/<device>/images[/<image-id>]")
        site, device = levels[0], levels[1]
        if site == RESERVED_SITE:
            raise TopicError(f"site {RESERVED_SITE!r} is reserved")
        for name, value in (("site", site), ("device", device)):
            if not is_valid_id(value):
                raise TopicError(f"{name} is empty, too long or has characters outside [A-Za-z0-9._-]")
        if len(levels) == 3:
            return ImageTopic(site, device, None)
        if is_valid_id(levels[3]):
            return ImageTopic(site, device, levels[3])
        return ImageTopic(site, device, None, invalid_image_id=levels[3])

    def response_topic_allowed(self, response_topic: str, site: str, device: str) -> bool:
        """True when a requested Response Topic is the requesting device's ``verdicts`` or under its ``replies/``.

        Anything else is refused: a device must not aim verdicts at another device, and a response
        topic that is itself an image topic would make the gateway judge its own verdicts.
        """
        namespace = self.device_namespace(site, device)
        try:
            size = len(response_topic.encode("utf-8"))
        except UnicodeEncodeError:  # not UTF-8 (an unpaired surrogate): no MQTT topic at all
            return False
        if not response_topic.startswith(namespace) or size > MAX_RESPONSE_TOPIC_BYTES:
            return False
        rest = response_topic[len(namespace) :].split("/")
        if any(level == "" or "+" in level or "#" in level or "\0" in level for level in rest):
            return False
        # what the shipped ACL lets a device read: its verdicts topic, or a topic under its replies/
        return rest == ["verdicts"] or (rest[0] == "replies" and len(rest) > 1)


def utc_timestamp(at: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T10:00:00.123Z``."""
    at = at or datetime.now(timezone.utc)
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _open_schema(schema: JsonDict) -> None:
    """Published schemas allow unknown fields: later versions of the same schema may add some."""
    schema.pop("additionalProperties", None)


class _Message(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_enum_values=True,
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,  # every field is always sent, null or not
        json_schema_extra=_open_schema,
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class FocusOut(_Message):
    label: Literal["sharp", "not_sharp"]
    sharp_probability: float = Field(ge=0.0, le=1.0)


class CervixOut(_Message):
    found: bool
    box: tuple[float, float, float, float] | None = Field(
        description="x0, y0, x1, y1 normalised to 0..1 of the displayed (EXIF-oriented) image"
    )
    score: float = Field(ge=0.0, le=1.0)


class ExposureOut(_Message):
    mean_luma: float
    too_dark: bool
    overexposed: bool


class VerdictMessage(_Message):
    """The gateway's answer to one photo."""

    schema_: str = Field(
        default=VERDICT_SCHEMA,
        alias="schema",
        serialization_alias="schema",
        json_schema_extra={"const": VERDICT_SCHEMA},
    )
    image_id: str = Field(
        description="The image-id user property, else the id in the topic, else (and for bad_image_id) the id derived"
        " from the payload"
    )
    site: str
    device: str
    verdict: Outcome
    reasons: list[Reason]
    focus: FocusOut | None
    cervix: CervixOut | None
    exposure: ExposureOut | None = None
    retry_after_ms: int | None = Field(default=None, description="Set with reason busy: when to send again")
    best_image_id: str | None = Field(
        default=None, description="Set with reason recapture_limit: the sharpest photo of the run"
    )
    detail: str | None = Field(
        default=None,
        description="Human-readable detail for errors; for bad_image_id it quotes the id sent (characters outside"
        " printable ASCII escaped, cut to 64)",
    )
    backend: str
    models: dict[str, str]
    timings_ms: dict[str, float]
    received_at: str
    decided_at: str


class RecaptureMessage(_Message):
    """Asks the device to take the photo again, with guidance for the health worker."""

    schema_: str = Field(
        default=RECAPTURE_SCHEMA,
        alias="schema",
        serialization_alias="schema",
        json_schema_extra={"const": RECAPTURE_SCHEMA},
    )
    image_id: str
    site: str
    device: str
    reasons: list[Reason]
    guidance: list[str]
    expires_at: str


class StatusMessage(_Message):
    """The gateway's availability: retained, and also its Last Will."""

    schema_: str = Field(
        default=STATUS_SCHEMA,
        alias="schema",
        serialization_alias="schema",
        json_schema_extra={"const": STATUS_SCHEMA},
    )
    gateway_id: str
    state: Literal["online", "offline", "degraded"]
    version: str
    backend: str | None = None
    models: dict[str, str] = Field(default_factory=dict)
    since: str
    detail: str | None = None
    """Why the state is ``degraded`` (e.g. a TensorRT build failed and ONNX Runtime serves instead)."""


SCHEMA_FILES: dict[str, type[_Message]] = {
    "verdict.json": VerdictMessage,
    "recapture.json": RecaptureMessage,
    "status.json": StatusMessage,
}
"""The JSON Schemas of the published messages, by file name (committed under docs/schemas/)."""


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each published message's JSON Schema (draft 2020-12), generated from its model, by file name."""
    return {
        name: {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **model.model_json_schema(by_alias=True, mode="serialization"),
        }
        for name, model in SCHEMA_FILES.items()
    }


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.protocol --write-schemas docs/schemas``: regenerate the committed schema files."""
    parser = argparse.ArgumentParser(prog="python -m gateway.protocol", description=main.__doc__)
    parser.add_argument("--write-schemas", type=Path, metavar="DIR", required=True)
    folder = parser.parse_args(argv).write_schemas
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (folder / name).write_text(schema_text(schema))
        print(folder / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
