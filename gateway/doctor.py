"""``colpo-gateway doctor``: what can run here and why not, which engines are cached and valid, the broker.

It changes nothing: it builds no engine and publishes nothing (it connects to the broker and disconnects).
Exit status 0 when the configured backend can run as configured and the broker answers, else 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway import __version__
from gateway.backends import onnxruntime as ort_backend
from gateway.backends.runtime import InferenceError, shapes
from gateway.config import BrokerConfig, GatewayConfig
from gateway.engines.cache import EngineCache, PlanKey, Target, plan_status
from gateway.models.manifest import Manifest, ManifestError, check_signature, parse_manifest, verify_files
from gateway.transport import apply_credentials

TargetProbe = Callable[[], tuple[Target | None, str]]


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
        client.connect(broker.host, broker.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return False, f"unreachable: {exc}"
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return False, f"no MQTT answer within {timeout_s:.0f} s (TCP connected)"
        reason = outcome["reason"]
        elapsed = (time.monotonic() - started) * 1e3
        if reason.is_failure:
            return False, f"refused: {reason}"
        return True, f"reachable: CONNACK {reason} in {elapsed:.0f} ms"
    finally:
        client.disconnect()
        client.loop_stop()


class _Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def section(self, title: str) -> None:
        print(f"\n{title}", file=self.out)

    def line(self, text: str) -> None:
        print(f"  {text}", file=self.out)


def _manifest(config: GatewayConfig, report: _Report) -> tuple[Manifest | None, bool]:
    """The manifest (None if absent/invalid) and whether it is fine."""
    path = config.models.manifest_path()
    report.section(f"Model manifest  {path}")
    if not path.is_file():
        report.line("absent: no learned models; auto uses the classical assessor")
        return None, True
    try:
        manifest = parse_manifest(path.read_text(), str(path), path.parent)
    except (ManifestError, OSError) as exc:
        for problem in exc.problems if isinstance(exc, ManifestError) else [str(exc)]:
            report.line(f"INVALID {problem}")
        return None, False
    problems = {p.split(":", 1)[0]: p for p in verify_files(manifest)}
    if not manifest.models:
        report.line("valid; lists no models (auto uses the classical assessor)")
    for spec in manifest.models:
        state = f"INVALID {problems[spec.name]}" if spec.name in problems else "sha256 ok"
        report.line(f"{spec.name} {spec.version} ({spec.task}, {manifest.onnx_path(spec).name}): {state}")
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
                manifest.onnx_path(spec), models.onnxruntime_providers, models.onnxruntime_threads
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
        key = PlanKey.of(spec, models.precision, models.max_batch, target)
        if cache.find(key) is None:
            report.line(f"{spec.name}: no {models.precision} plan for this GPU yet (built at start, or: engines build)")
            ready = False
    return ready


def _choice(
    config: GatewayConfig, manifest: Manifest | None, ort_ok: bool, trt_ok: bool, plans: bool
) -> tuple[str, bool]:
    """What the gateway would serve with at start, and whether that is what the config asks for."""
    requested = config.backend
    if requested == "classical":
        return "classical (configured)", True
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


def run_doctor(config: GatewayConfig, out: TextIO | None = None, tensorrt: TargetProbe | None = None) -> int:
    """Print the report; 0 when the configured backend runs as configured and the broker answers."""
    import sys

    report = _Report(out or sys.stdout)
    print(f"colposcopy-gateway {__version__} doctor", file=report.out)
    manifest, manifest_ok = _manifest(config, report)
    report.section("Backends")
    report.line("classical    yes  model-free assessor, always available")
    ort_ok = _onnxruntime(config, manifest, report)
    target, why = (tensorrt or _tensorrt_probe(config))()
    report.line(f"tensorrt     {'yes' if target else 'no '}  {why}")
    plans = _engines(config, manifest, target, report)
    choice, as_configured = _choice(config, manifest, ort_ok, target is not None, plans)
    report.section("Selection")
    report.line(f"backend: {config.backend} -> {choice}{'' if as_configured else '  (DEGRADED)'}")
    report.section(f"Broker  {config.broker.url}")
    broker_ok, broker_why = broker_check(config.broker)
    report.line(broker_why)
    healthy = manifest_ok and as_configured and broker_ok
    print(f"\n{'OK' if healthy else 'PROBLEMS FOUND'}", file=report.out)
    return 0 if healthy else 1
