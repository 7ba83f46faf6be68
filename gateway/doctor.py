"""``colpo-gateway doctor``: what can run here and why not, which engines are cached and valid, the broker, and
whether the installed service has what it needs (config, credentials, writable folders, the metrics port).

It changes nothing: it builds no engine, creates no folder and publishes nothing (it connects to the broker and
disconnects). Exit status 0 when the configured backend can run as configured, the broker answers and the service
checks pass, else 1.
"""

from __future__ import annotations

import errno
import getpass
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway import __version__, allocator
from gateway.config import BrokerConfig, GatewayConfig, MetricsConfig
from gateway.config_files import check_files, service_user
from gateway.connect_failures import from_connack, from_exception
from gateway.engines.cache import EngineCache, Target, plan_status
from gateway.models.manifest import Manifest, ManifestError, check_signature, parse_manifest, verify_files
from gateway.runtimes import onnxruntime as ort_backend
from gateway.runtimes.runtime import InferenceError, shapes
from gateway.transport import apply_credentials

TargetProbe = Callable[[], tuple[Target | None, str]]

CREDENTIAL_SOURCE = Path("/etc/colposcopy-gateway/mqtt-password")
"""The file the unit's ``LoadCredential=mqtt-password:...`` reads (readable by root only)."""


def _tensorrt_probe(config: GatewayConfig) -> TargetProbe:
    def probe() -> tuple[Target | None, str]:
        from gateway.engines.provider import TensorRTEngines

        return TensorRTEngines(config.models).probe()

    return probe


def broker_check(broker: BrokerConfig, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Connect (TCP, TLS when configured, MQTT 5 CONNECT with the configured credentials), then disconnect."""
    answered = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        outcome["reason"] = reason
        answered.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{broker.client_id or 'colposcopy-gateway'}-doctor"[:64],
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_connect = on_connect
    started = time.monotonic()
    try:
        apply_credentials(client, broker)
    except OSError as exc:
        return False, f"not tried: the password cannot be read ({exc})"
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError as exc:  # ssl.SSLError included
        return False, f"unreachable: {from_exception(exc, broker).describe()}"
    except ValueError as exc:
        return False, f"unreachable: {exc}"
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return False, f"no MQTT answer within {timeout_s:.0f} s (TCP connected)"
        reason = outcome["reason"]
        elapsed = (time.monotonic() - started) * 1e3
        if reason.is_failure:
            return False, f"refused: {from_connack(reason, broker).describe()}"
        return True, f"reachable: CONNACK {reason} in {elapsed:.0f} ms"
    finally:
        client.disconnect()
        client.loop_stop()


class _Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.problems: list[str] = []
        self._section = ""

    def section(self, title: str) -> None:
        self._section = title
        print(f"\n{title}", file=self.out)

    def line(self, text: str) -> None:
        print(f"  {text}", file=self.out)

    def problem(self, text: str) -> None:
        """A line that makes the report fail; listed again, with its section, under PROBLEMS FOUND."""
        self.line(text)
        self.problems.append(f"{self._section}: {text}")

    def verdict(self, healthy: bool = True) -> int:
        """Print OK, or PROBLEMS FOUND and each problem; the exit status."""
        if healthy and not self.problems:
            print("\nOK", file=self.out)
            return 0
        print("\nPROBLEMS FOUND", file=self.out)
        for problem in self.problems:
            print(f"  - {problem}", file=self.out)
        return 1


def _manifest(config: GatewayConfig, report: _Report) -> tuple[Manifest | None, bool]:
    """The manifest (None if absent/invalid) and whether it is fine."""
    path = config.models.manifest_path()
    report.section(f"Model manifest  {path}")
    if not path.is_file():
        if config.backend == "classical":
            report.line("absent (backend: classical needs none)")
            return None, True
        report.line("ABSENT: the gateway judges with the classical assessor and reports degraded")
        return None, False
    try:
        manifest = parse_manifest(path.read_text(), str(path), path.parent)
    except (ManifestError, OSError) as exc:
        for problem in exc.problems if isinstance(exc, ManifestError) else [str(exc)]:
            report.problem(f"INVALID {problem}")
        return None, False
    problems = {p.split(":", 1)[0]: p for p in verify_files(manifest)}
    if not manifest.models:
        report.line("valid; lists no models (auto uses the classical assessor)")
    for spec in manifest.models:
        line = f"{spec.name} {spec.version} ({spec.task}, {manifest.onnx_path(spec).name}): "
        if spec.name in problems:
            report.problem(line + f"INVALID {problems[spec.name]}")
        else:
            report.line(line + "sha256 ok")
    return (None, False) if problems else (manifest, True)


def _onnxruntime(config: GatewayConfig, manifest: Manifest | None, report: _Report) -> bool:
    available, why = ort_backend.probe()
    if not available:
        report.line(f"onnxruntime  no   {why}")
        return False
    if manifest is None or not manifest.models:
        report.line(f"onnxruntime  yes  {why} (but no models to run)")
        return False
    models = config.models
    for spec in manifest.models:
        try:
            runtime = ort_backend.OnnxRuntime(
                manifest.onnx_path(spec),
                models.onnxruntime_providers,
                models.onnxruntime_threads,
                models.onnxruntime_memory_arena,
            )
            check_signature(spec, shapes(runtime.inputs), shapes(runtime.outputs))
        except (InferenceError, ManifestError) as exc:
            report.line(f"onnxruntime  no   {spec.name} does not run: {exc}")
            return False
    report.line(f"onnxruntime  yes  {why}; all {len(manifest.models)} models load and match the manifest")
    return True


def _engines(config: GatewayConfig, manifest: Manifest | None, target: Target | None, report: _Report) -> bool:
    """Report the cache; True when every model has a valid plan for this target."""
    cache = EngineCache(config.models.cache_dir())
    report.section(f"Engine cache  {cache.root}{'' if cache.root.is_dir() else ' (absent)'}")
    entries = cache.entries()
    for entry in entries:
        valid, why = plan_status(entry, target, manifest)
        report.line(f"{entry.path.name}: {'valid' if valid else 'unusable: ' + why}")
    timing = sorted(cache.root.glob("timing_*.cache")) if cache.root.is_dir() else []
    if timing:
        report.line(f"timing caches: {', '.join(p.name for p in timing)}")
    if not entries and not timing:
        report.line("empty")
    if target is None or manifest is None or not manifest.models:
        return False
    models = config.models
    ready = True
    for spec in manifest.models:
        key = cache.key(spec, models.precision, models.max_batch, target)
        if cache.find(key) is None:
            report.line(f"{spec.name}: no {models.precision} plan for this GPU yet (built at start, or: engines build)")
            ready = False
    return ready


def _credentials(broker: BrokerConfig, report: _Report) -> bool:
    """With a username, the password must be found: systemd credential, environment or password file."""
    report.section("Credentials")
    if broker.username is None:
        report.line("no username: anonymous access to the broker")
        return True
    user = f"username {broker.username!r}"
    try:
        password = broker.password()
    except FileNotFoundError:
        report.problem(f"{user}: the password file {broker.password_file} does not exist")
        return False
    except OSError as exc:
        report.problem(f"{user}: the password file cannot be read: {exc}")
        return False
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if password and credentials and (Path(credentials) / "mqtt-password").is_file():
        report.line(f"{user}: password found (systemd credential mqtt-password)")
    elif password and os.environ.get("COLPO_GATEWAY_MQTT_PASSWORD"):
        report.line(f"{user}: password found (COLPO_GATEWAY_MQTT_PASSWORD)")
    elif password:
        report.line(f"{user}: password found (password_file {broker.password_file})")
    elif CREDENTIAL_SOURCE.is_file() and CREDENTIAL_SOURCE.stat().st_size > 0:
        report.line(f"{user}: password found in {CREDENTIAL_SOURCE} (the unit loads it as credential mqtt-password)")
    else:
        report.problem(
            f"{user} but NO PASSWORD: put it in {CREDENTIAL_SOURCE} (credential mqtt-password),"
            " COLPO_GATEWAY_MQTT_PASSWORD or broker.password_file"
        )
        return False
    return True


def _writable(path: Path) -> tuple[bool, str]:
    """Whether the gateway can write in ``path``, or create it in its nearest existing parent."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return False, f"NOT USABLE: {parent} is not a folder"
    where = "writable" if parent == path else f"absent, can be created in {parent}"
    if os.access(parent, os.W_OK | os.X_OK):
        return True, where
    return False, f"NOT WRITABLE by {getpass.getuser()}: {parent}"


def _folders(config: GatewayConfig, report: _Report) -> bool:
    report.section("Folders")
    ok = True
    for name, path in (("engine cache", config.models.cache_dir()), ("verdict store", config.store.resolved_path())):
        folder = path if name == "engine cache" else path.parent
        writable, why = _writable(folder)
        (report.line if writable else report.problem)(f"{name}  {folder}: {why}")
        ok = ok and writable
    return ok


def _metrics(metrics: MetricsConfig, report: _Report) -> bool:
    """The metrics port: free to bind, or held by a running gateway that answers /healthz."""
    report.section(f"Metrics  http://{metrics.host}:{metrics.port}/metrics")
    if not metrics.enabled:
        report.line("disabled")
        return True
    if metrics.port == 0:
        report.line("port 0: the system picks a free port at start")
        return True
    family = socket.AF_INET6 if ":" in metrics.host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway's HTTP server does
        try:
            sock.bind((metrics.host, metrics.port))
            report.line(f"port {metrics.port} is free")
            return True
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                report.problem(f"CANNOT LISTEN on {metrics.host}:{metrics.port}: {exc.strerror}")
                return False
    host = "127.0.0.1" if metrics.host == "0.0.0.0" else metrics.host
    if family == socket.AF_INET6:
        host = "[::1]" if metrics.host == "::" else f"[{metrics.host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{metrics.port}/healthz", timeout=3) as answer:
            report.line(f"port {metrics.port} in use by the running gateway: /healthz answers {answer.status}")
    except OSError as exc:  # URLError included
        report.problem(f"port {metrics.port} IN USE by another program (/healthz: {exc})")
        return False
    report.line(f"the running gateway: {_readyz(f'http://{host}:{metrics.port}/readyz')}")
    return True


def _readyz(url: str) -> str:
    """What the running gateway's /readyz says: ready, or why not (e.g. the last broker connect failure)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return str(answer.read().decode(errors="replace").strip())
    except urllib.error.HTTPError as exc:
        return f"NOT READY: {exc.read().decode(errors='replace').strip()}"
    except OSError as exc:
        return f"/readyz did not answer: {exc}"


def _allocator(report: _Report) -> None:
    """Advisory: the unit preloads jemalloc; without it memory creeps under load (not a failure)."""
    report.section("Memory allocator")
    if allocator.jemalloc_installed():
        report.line(f"jemalloc installed: the unit preloads {allocator.JEMALLOC}")
    else:
        report.line("jemalloc NOT INSTALLED (apt install libjemalloc2): on glibc malloc, memory creeps under load")


def _choice(
    config: GatewayConfig, manifest: Manifest | None, ort_ok: bool, trt_ok: bool, plans: bool
) -> tuple[str, bool]:
    """What the gateway would serve with at start, and whether that is what the config asks for."""
    requested = config.backend
    if requested == "classical":
        return "classical (configured)", True
    if not config.models.manifest_path().is_file():
        return "classical: no model manifest", False
    if manifest is None or not manifest.models:
        return "classical: no models in the manifest", requested == "auto"
    if requested in ("auto", "tensorrt") and trt_ok:
        if plans:
            return "tensorrt (cached engines)", True
        interim = "onnxruntime" if ort_ok else "classical"
        return f"{interim} while TensorRT engines build, then tensorrt", config.models.build_in_background
    if ort_ok:
        return "onnxruntime", requested != "tensorrt"
    return "classical: neither TensorRT nor ONNX Runtime can run the models", requested == "auto"


def invalid_config(source: Path | None, problems: list[str], out: TextIO | None = None) -> int:
    """The report for a config that does not validate: its problems, and exit status 1."""
    import sys

    report = _Report(out or sys.stdout)
    print(f"colposcopy-gateway {__version__} doctor", file=report.out)
    report.section(f"Config  {source or '(none: the defaults)'}")
    for problem in problems:
        report.problem(f"INVALID {problem}")
    return report.verdict()


def run_doctor(
    config: GatewayConfig,
    out: TextIO | None = None,
    tensorrt: TargetProbe | None = None,
    source: Path | None = None,
) -> int:
    """Print the report; 0 when the configured backend runs as configured, the broker answers and the service
    checks pass. ``source`` names the config file."""
    import sys

    report = _Report(out or sys.stdout)
    print(f"colposcopy-gateway {__version__} doctor", file=report.out)
    report.section(f"Config  {source or '(none: the defaults)'}")
    report.line(f"valid: gateway_id {config.gateway_id}, broker {config.broker.url}")
    files = check_files(config, source, service_user())
    for problem in files.errors:
        report.problem(f"INVALID {problem}")
    for warning in files.warnings:
        report.line(f"warning: {warning}")
    manifest, manifest_ok = _manifest(config, report)
    report.section("Backends")
    report.line("classical    yes  model-free assessor, always available")
    ort_ok = _onnxruntime(config, manifest, report)
    target, why = (tensorrt or _tensorrt_probe(config))()
    report.line(f"tensorrt     {'yes' if target else 'no '}  {why}")
    plans = _engines(config, manifest, target, report)
    choice, as_configured = _choice(config, manifest, ort_ok, target is not None, plans)
    report.section("Selection")
    (report.line if as_configured else report.problem)(
        f"backend: {config.backend} -> {choice}{'' if as_configured else '  (DEGRADED)'}"
    )
    credentials_ok = _credentials(config.broker, report)
    tls = f" (TLS, CA: {config.broker.ca_file or 'the system store'})" if config.broker.tls else ""
    report.section(f"Broker  {config.broker.url}{tls}")
    broker_ok = False
    if credentials_ok:
        broker_ok, broker_why = broker_check(config.broker)
        (report.line if broker_ok else report.problem)(broker_why)
    else:
        report.line("not tried: no password to connect with (see Credentials)")
    folders_ok = _folders(config, report)
    metrics_ok = _metrics(config.metrics, report)
    _allocator(report)
    checks = (not files.errors, manifest_ok, as_configured, broker_ok, credentials_ok, folders_ok, metrics_ok)
    return report.verdict(all(checks))
