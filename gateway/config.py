"""Typed configuration: read once at start from YAML, validated, then passed down (never read from globals).

Every problem is reported with the file, the line and the dotted key, e.g.
``gateway.yaml:14: policy.borderline_band: Input should be less than or equal to 0.5``; unknown keys are errors.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.backends.classical import ClassicalConfig
from gateway.backends.settings import ModelsConfig
from gateway.exposure import ExposureConfig
from gateway.protocol import RESERVED_SITE, is_valid_id

_PREFIX = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Section):
    url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://host:port, or mqtts://host:port for TLS")
    client_id: str | None = Field(default=None, description="Defaults to colposcopy-gateway-<gateway_id>")
    username: str | None = None
    password_file: Path | None = Field(
        default=None,
        description=(
            "File holding the broker password; or the systemd credential mqtt-password, or"
            " COLPO_GATEWAY_MQTT_PASSWORD. Never in this YAML"
        ),
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for mqtts://; the system store when unset")
    cert_file: Path | None = Field(default=None, description="Client certificate for mutual TLS (optional)")
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    share_group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Several gateways on one broker: the group that shares the photos ($share/<group>/...). Off"
        " (null) for one gateway: Mosquitto 2.0 does not restore a shared subscription after a restart",
    )
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        le=2**32 - 1,
        description="How long the broker keeps this gateway's session (and queues photos for it) while it is away",
    )
    status_interval_s: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="The retained status is republished this often as a heartbeat, with an MQTT 5 message expiry of"
        " 3 times this: a status left by a gateway that died with the broker (a power cut) disappears by itself",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def password(self) -> str | None:
        """The password from a systemd credential, the environment or the password file (in that order)."""
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / "mqtt-password").is_file():
            return (Path(credentials) / "mqtt-password").read_text().strip()
        if env := os.environ.get("COLPO_GATEWAY_MQTT_PASSWORD"):
            return env
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


class DecodeConfig(_Section):
    max_payload_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Larger photos get too_large")
    max_pixels: int = Field(default=50_000_000, ge=10_000, description="Checked from the header, before decoding")
    analysis_long_side: int = Field(
        default=1200,
        ge=256,
        le=8192,
        description="JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale whose long side is at least this",
    )
    max_decoded_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Memory one photo's decode may take, from its header (pixels at the decode scale x 3 bytes,"
        " plus the decoder's own buffers); more gets too_large. A 12 MP JPEG takes 9 MB, a 12 MP PNG 72 MB",
    )
    memory_budget_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Memory all workers together may take for decoding and judging at once; a photo waits for room",
    )
    memory_wait_s: float = Field(
        default=10,
        ge=0,
        le=30,
        description="How long a photo waits for room in memory_budget_bytes before it is answered busy (at most 30:"
        " a waiting worker does not beat the unit's 60 s watchdog)",
    )

    @field_validator("memory_budget_bytes")
    @classmethod
    def _budget_fits_a_photo(cls, value: int, info: ValidationInfo) -> int:
        photo = info.data.get("max_decoded_bytes")
        if photo is not None and photo > value:
            raise ValueError(f"must be at least decode.max_decoded_bytes ({photo}): such a photo could never be judged")
        return value


class ProcessingConfig(_Section):
    workers: int = Field(default=0, ge=0, le=64, description="Worker threads; 0 = one per CPU core")
    queue_size: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Photos waiting beyond this get a busy error; each device gets a fair share",
    )
    busy_retry_after_ms: int = Field(default=2000, ge=0)
    shutdown_grace_s: float = Field(
        default=20,
        gt=0,
        le=300,
        description="On SIGTERM: time to finish the photos in flight; what is left is redelivered by the broker",
    )

    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)


def default_state_dir() -> Path:
    """Under systemd (``StateDirectory=``): ``$STATE_DIRECTORY``, i.e. /var/lib/colposcopy-gateway; else
    ``$XDG_STATE_HOME`` (or ``~/.local/state``) ``/colposcopy-gateway``."""
    if systemd := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd.split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "colposcopy-gateway"


class StoreConfig(_Section):
    path: Path | None = Field(
        default=None,
        description="SQLite file of the verdicts decided (a duplicate gets the same answer); unset: "
        "<state dir>/verdicts.sqlite3",
    )
    max_age_s: float = Field(
        default=86400, gt=0, description="Forget verdicts older than this (by a clock that NTP steps do not move)"
    )
    max_entries: int = Field(default=100_000, ge=100, description="Keep at most this many verdicts")
    max_entries_per_device: int = Field(
        default=10_000,
        ge=10,
        description="Keep at most this many verdicts of one device, so that one device cannot evict another's",
    )

    @model_validator(mode="after")
    def _quota_within_total(self) -> StoreConfig:
        if self.max_entries_per_device > self.max_entries:
            raise ValueError("max_entries_per_device must not exceed max_entries")
        return self

    def resolved_path(self) -> Path:
        return self.path or default_state_dir() / "verdicts.sqlite3"


class PolicyConfig(_Section):
    sharp_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="sharp_probability at or above: sharp")
    borderline_band: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Below the threshold by at most this: accept with borderline_focus instead of recapture",
    )
    max_consecutive_recaptures: int = Field(
        default=3,
        ge=0,
        description="After this many recapture requests in a row, accept the best photo of the run",
    )
    run_timeout_s: float = Field(default=600, gt=0, description="A device idle this long starts a new run")
    recapture_expiry_s: int = Field(default=120, ge=1, description="MQTT 5 message expiry of recapture requests")

    @property
    def out_of_focus_below(self) -> float:
        """Below this sharp probability a photo is out of focus (recaptured, with its blur type)."""
        return self.sharp_threshold - self.borderline_band


class MetricsConfig(_Section):
    enabled: bool = Field(default=True, description="Prometheus /metrics, /healthz and /readyz over HTTP")
    host: str = Field(default="127.0.0.1", description="Address to listen on; 0.0.0.0 for every interface")
    port: int = Field(default=9464, ge=0, le=65535, description="0: any free port")


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(default="auto", description="auto: JSON unless on a terminal")


def _default_gateway_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48].strip("-")
    return f"gw-{name}" if name else "gw-1"


class GatewayConfig(_Section):
    gateway_id: str = Field(default_factory=_default_gateway_id, description="Names this gateway's status topic")
    topic_prefix: str = Field(default="colposcopy")
    backend: Literal["auto", "tensorrt", "onnxruntime", "classical"] = Field(
        default="auto",
        description="auto: TensorRT if it imports and a GPU answers, else ONNX Runtime (if the manifest has models),"
        " else classical",
    )
    broker: BrokerConfig = BrokerConfig()
    decode: DecodeConfig = DecodeConfig()
    processing: ProcessingConfig = ProcessingConfig()
    classical: ClassicalConfig = ClassicalConfig()
    models: ModelsConfig = ModelsConfig()
    exposure: ExposureConfig = ExposureConfig()
    policy: PolicyConfig = PolicyConfig()
    store: StoreConfig = StoreConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id(cls, value: str) -> str:
        if not is_valid_id(value):
            raise ValueError("1..64 characters of [A-Za-z0-9._-]")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value):
            raise ValueError("topic levels of [A-Za-z0-9_-] separated by '/', no wildcards")
        if value.split("/")[-1] == RESERVED_SITE:
            raise ValueError(f"must not end in the reserved level {RESERVED_SITE!r}")
        return value

    @model_validator(mode="after")
    def _client_id(self) -> GatewayConfig:
        if self.broker.client_id is None:
            broker = self.broker.model_copy(update={"client_id": f"colposcopy-gateway-{self.gateway_id}"})
            object.__setattr__(self, "broker", broker)
        return self


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds one line per problem, each naming file, line and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _key_lines(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    """Record the 1-based line of every key (and list item) in a composed YAML tree."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            out[child] = key.start_mark.line + 1
            _key_lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child_path = (*path, index)
            out[child_path] = item.start_mark.line + 1
            _key_lines(item, child_path, out)


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """The 1-based line of every key of a YAML text (empty when it does not parse)."""
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        _key_lines(root, (), lines)
    return lines


def _duplicate_keys(node: yaml.Node, path: tuple[str, ...], source: str, out: list[str]) -> None:
    """A key given twice in one mapping: YAML keeps the last silently, so a second ``broker:`` block would replace
    the first. Each one is an error naming both lines."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            dotted = ".".join((*path, name))
            if name in first:
                out.append(f"{source}:{line}: {dotted}: duplicate key, also at line {first[name]} (the last one wins)")
            else:
                first[name] = line
            _duplicate_keys(value, (*path, name), source, out)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicate_keys(item, path, source, out)


_PASSWORD_ELSEWHERE = (
    "unknown key: the password never goes in this file; put it in the systemd credential mqtt-password"
    " (/etc/colposcopy-gateway/mqtt-password for the installed unit), the environment variable"
    " COLPO_GATEWAY_MQTT_PASSWORD, or a file named by broker.password_file"
)


def parse_config(text: str, source: str = "<config>", overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Validate YAML text (plus top-level section overrides, e.g. from the command line)."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        raise ConfigError([f"{source}:{line}: YAML syntax error: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the top level must be a mapping of keys"])
    for section, values in (overrides or {}).items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    lines: dict[tuple[str | int, ...], int] = {}
    if root is not None:
        _key_lines(root, (), lines)
        duplicates: list[str] = []
        _duplicate_keys(root, (), source, duplicates)
        if duplicates:
            raise ConfigError(duplicates)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems: list[tuple[int, str]] = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            # the line of the key itself, else of the closest parent that is in the file
            at = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), "?")
            key = ".".join(str(part) for part in loc) or "(top level)"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            if error["type"] == "extra_forbidden" and loc == ("broker", "password"):
                message = _PASSWORD_ELSEWHERE
            problems.append((at if isinstance(at, int) else 0, f"{source}:{at}: {key}: {message}"))
        raise ConfigError([text for _, text in sorted(problems, key=lambda p: p[0])]) from None


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Load and validate a config file; ``None`` gives the defaults (plus overrides)."""
    if path is None:
        return parse_config("", "<defaults>", overrides)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_config(text, str(path), overrides)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def defaults_yaml(model: BaseModel | None = None, indent: int = 0) -> str:
    """The default configuration as commented YAML (``config/gateway.yaml`` is this output)."""
    model = model or GatewayConfig(gateway_id="gw-1")
    lines: list[str] = []
    pad = "  " * indent
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            if info.description:
                lines.append(f"{pad}# {info.description}")
            lines.append(f"{pad}{name}:")
            lines.append(defaults_yaml(value, indent + 1))
            continue
        if name == "client_id" and indent:
            value = None  # derived from gateway_id unless set
        comment = f"  # {info.description}" if info.description else ""
        lines.append(f"{pad}{name}: {_yaml_scalar(value)}{comment}")
    return "\n".join(lines)
