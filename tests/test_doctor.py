"""``colpo-gateway doctor`` tells the truth: backends, manifest, engines, broker, and the installed service's
config, credentials, folders and metrics port."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config_files
from gateway import doctor as doctor_module
from gateway.config import MetricsConfig, parse_config
from gateway.doctor import broker_check, run_doctor
from gateway.engines.cache import EngineCache, PlanKey, Target
from gateway.metrics import Metrics
from gateway.models.manifest import load_manifest
from tests.certs import CertificateAuthority
from tests.conftest import Broker, free_port, start_mosquitto
from tests.onnx_models import detector_and_classifier

REPO = Path(__file__).resolve().parents[1]
ORIN = Target("10.3.0.30", "Orin (nvgpu)", (8, 7))


def doctor(text: str, trt: tuple[Target | None, str] = (None, "tensorrt is not installed")) -> tuple[int, str]:
    out = io.StringIO()
    code = run_doctor(parse_config(text), out, tensorrt=lambda: trt)
    return code, out.getvalue()


def test_healthy_onnxruntime_gateway(tmp_path: Path, broker: Broker) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    code, report = doctor(f"broker: {{url: '{broker.url}'}}\nmodels: {{manifest: '{manifest}'}}\n")
    assert code == 0, report
    assert "cervix-detector 0.0.1 (cervix_detector, detector.onnx): sha256 ok" in report
    assert "onnxruntime  yes  onnxruntime " in report and "all 2 models load and match the manifest" in report
    assert "tensorrt     no   tensorrt is not installed" in report
    assert "backend: auto -> onnxruntime" in report
    assert "reachable: CONNACK Success" in report and report.rstrip().endswith("OK")


def test_problems_are_found_and_named(tmp_path: Path) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    (manifest.parent / "classifier.onnx").write_bytes(b"changed")
    port = free_port()
    code, report = doctor(
        f"backend: tensorrt\nbroker: {{url: 'mqtt://127.0.0.1:{port}'}}\nmodels: {{manifest: '{manifest}'}}\n"
    )
    assert code == 1
    assert (
        "focus-classifier 0.0.2 (focus_classifier, classifier.onnx): INVALID focus-classifier: classifier.onnx"
        in report
    )
    assert f"unreachable: refused: nothing listens at 127.0.0.1:{port} (connection refused)" in report
    assert "(DEGRADED)" in report
    found = problems_found(report)  # (and the metrics port, when another program on this machine holds it)
    assert found[0].startswith(
        f"Model manifest  {manifest}: focus-classifier 0.0.2 (focus_classifier, classifier.onnx): INVALID"
        " focus-classifier: classifier.onnx has sha256 "
    )
    assert found[1:3] == [
        "Selection: backend: tensorrt -> classical: no models in the manifest  (DEGRADED)",
        f"Broker  mqtt://127.0.0.1:{port}: unreachable: refused: nothing listens at 127.0.0.1:{port}"
        " (connection refused)",
    ]


def problems_found(report: str) -> list[str]:
    """The problems listed under the report's closing PROBLEMS FOUND line."""
    _, found, tail = report.rpartition("\nPROBLEMS FOUND\n")
    assert found, report
    lines = tail.rstrip("\n").split("\n")
    assert all(line.startswith("  - ") for line in lines), tail
    return [line[4:] for line in lines]


def test_engines_are_listed_and_judged(tmp_path: Path, broker: Broker) -> None:
    manifest_path = detector_and_classifier(tmp_path / "models")
    manifest = load_manifest(manifest_path)
    cache = EngineCache(tmp_path / "cache")
    current = cache.write_plan(PlanKey.of(manifest.models[0], "fp16", 4, ORIN), b"p")
    old = cache.write_plan(PlanKey.of(manifest.models[1], "fp16", 4, Target("10.3.0.26", "Orin (nvgpu)", (8, 7))), b"p")
    text = (
        f"broker: {{url: '{broker.url}'}}\nmodels: {{manifest: '{manifest_path}', engine_cache_dir: '{cache.root}'}}\n"
    )
    code, report = doctor(text, (ORIN, "TensorRT 10.3.0.30 on Orin (nvgpu) (sm87, integrated)"))
    assert f"{current.name}: valid" in report
    assert f"{old.name}: unusable: built with TensorRT 10.3.0.26, this is 10.3.0.30" in report
    assert "focus-classifier: no fp16 plan for this GPU yet" in report
    assert "tensorrt     yes  TensorRT 10.3.0.30 on Orin" in report
    assert "backend: auto -> onnxruntime while TensorRT engines build, then tensorrt" in report
    assert code == 0


def test_broker_check_reports_refusal(broker: Broker) -> None:
    ok, why = broker_check(parse_config(f"broker: {{url: '{broker.url}'}}").broker)
    assert ok and why.startswith("reachable")


def test_doctor_on_this_machine_from_the_command_line() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--broker", f"mqtt://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1  # nothing listens on that port
    # the repository's manifest lists the trained models: auto serves them through ONNX Runtime (first)
    assert "classical    yes" in result.stdout and "backend: auto -> onnxruntime" in result.stdout
    trt_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("tensorrt"))
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    assert ("tensorrt is not installed" in trt_line) is not has_trt


def classical_doctor(text: str) -> tuple[int, str]:
    """The doctor on a classical gateway: the service checks, whatever models the repository's manifest lists."""
    if "models:" not in text:
        text += "models: {manifest: /nonexistent/manifest.yaml}\n"
    return doctor("backend: classical\n" + text)


def section(report: str, title: str) -> str:
    """The lines of one report section (its title line up to the next blank line)."""
    start = report.index(f"\n{title}")
    return report[start:].split("\n\n")[0]


def test_invalid_config_is_reported_in_doctor_style(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("policy:\n  borderline_band: 3\nmetrics: {port: 99999}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"Config  {config}" in result.stdout
    assert f"INVALID {config}:2: policy.borderline_band" in result.stdout
    assert f"INVALID {config}:3: metrics.port" in result.stdout
    assert [p.split(": ", 2)[:2] for p in problems_found(result.stdout)] == [
        [f"Config  {config}", f"INVALID {config}:2"],
        [f"Config  {config}", f"INVALID {config}:3"],
    ]


def test_credentials_are_found_or_named_missing(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("COLPO_GATEWAY_MQTT_PASSWORD", raising=False)
    monkeypatch.setattr(doctor_module, "CREDENTIAL_SOURCE", tmp_path / "etc" / "mqtt-password")
    base = f"broker: {{url: '{broker.url}', username: gw"
    code, report = classical_doctor(base + "}\n")
    assert code == 1
    assert "username 'gw' but NO PASSWORD" in section(report, "Credentials")

    (tmp_path / "pw").write_text("secret\n")
    code, report = classical_doctor(base + f", password_file: '{tmp_path / 'pw'}'}}\n")
    assert f"username 'gw': password found (password_file {tmp_path / 'pw'})" in report
    assert code == 0, report  # the anonymous test broker takes any credentials

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mqtt-password").write_text("secret\n")  # as an admin sees it, outside the unit
    code, report = classical_doctor(base + "}\n")
    assert "password found in" in section(report, "Credentials") and code == 0

    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt-password").write_text("secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))  # as the unit sees it
    code, report = classical_doctor(base + "}\n")
    assert "password found (systemd credential mqtt-password)" in report and code == 0

    code, report = classical_doctor(f"broker: {{url: '{broker.url}'}}\n")
    assert "no username: anonymous access" in section(report, "Credentials")


def test_a_missing_password_file_is_named_not_an_unreachable_broker(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("COLPO_GATEWAY_MQTT_PASSWORD", raising=False)
    missing = tmp_path / "etc" / "mqtt-password"
    code, report = classical_doctor(
        f"broker: {{url: '{broker.url}', username: gw, password_file: '{missing}'}}\n"
        f"store: {{path: '{tmp_path / 'v.sqlite3'}'}}\nmetrics: {{port: 0}}\n"
    )
    assert code == 1
    assert f"username 'gw': the password file {missing} does not exist" in section(report, "Credentials")
    assert "not tried: no password to connect with" in section(report, "Broker")
    assert "unreachable" not in report
    assert problems_found(report) == [  # named by the config's file check and by the credentials check
        f"Config  (none: the defaults): INVALID <config>: broker.password_file: {missing} does not exist",
        f"Credentials: username 'gw': the password file {missing} does not exist",
    ]
    ok, why = broker_check(
        parse_config(f"broker: {{url: '{broker.url}', username: gw, password_file: '{missing}'}}").broker
    )
    assert not ok and why.startswith("not tried: the password cannot be read") and str(missing) in why


def test_broker_over_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    other = CertificateAuthority.create(tmp_path / "other", "other-ca")
    server = ca.issue("broker", "localhost", server=True)
    port = free_port()
    tls = start_mosquitto(
        tmp_path / "broker",
        f"listener {port} 127.0.0.1\ncafile {ca.cert}\ncertfile {server.cert}\nkeyfile {server.key}\n",
    )
    try:
        code, report = classical_doctor(f"broker: {{url: 'mqtts://127.0.0.1:{port}', ca_file: '{ca.cert}'}}\n")
        broker = section(report, "Broker")
        assert f"Broker  mqtts://127.0.0.1:{port} (TLS, CA: {ca.cert})" in broker
        assert "reachable: CONNACK Success" in broker and code == 0, report
        code, report = classical_doctor(f"broker: {{url: 'mqtts://127.0.0.1:{port}', ca_file: '{other.cert}'}}\n")
        broker = section(report, "Broker")
        assert "unreachable: tls_verification: self-signed certificate in certificate chain" in broker
        assert "presented a certificate for CN=localhost issued by CN=test-ca" in broker
        assert code == 1
    finally:
        tls.stop()


def test_cache_and_state_folders_must_be_writable(tmp_path: Path, broker: Broker) -> None:
    (tmp_path / "a-file").write_text("")
    code, report = classical_doctor(
        f"broker: {{url: '{broker.url}'}}\nstore: {{path: '{tmp_path / 'state' / 'verdicts.sqlite3'}'}}\n"
        f"models: {{manifest: /nonexistent/manifest.yaml, engine_cache_dir: '{tmp_path / 'a-file' / 'engines'}'}}\n"
    )
    folders = section(report, "Folders")
    assert (
        f"engine cache  {tmp_path / 'a-file' / 'engines'}: NOT USABLE: {tmp_path / 'a-file'} is not a folder" in folders
    )
    assert f"verdict store  {tmp_path / 'state'}: absent, can be created in {tmp_path}" in folders
    assert code == 1


def test_metrics_port_free_taken_by_the_gateway_or_by_another_program(tmp_path: Path, broker: Broker) -> None:
    base = f"broker: {{url: '{broker.url}'}}\nstore: {{path: '{tmp_path / 'v.sqlite3'}'}}\n"
    port = free_port()
    code, report = classical_doctor(base + f"metrics: {{port: {port}}}\n")
    assert f"port {port} is free" in section(report, "Metrics") and code == 0, report

    running = Metrics(MetricsConfig(port=0), lambda: None, lambda: 0, lambda: True)
    running.serve()
    try:
        code, report = classical_doctor(base + f"metrics: {{port: {running.port}}}\n")
        assert f"port {running.port} in use by the running gateway: /healthz answers 200" in report and code == 0
    finally:
        running.close()

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        code, report = classical_doctor(base + f"metrics: {{port: {taken}}}\n")
    assert f"port {taken} IN USE by another program" in section(report, "Metrics") and code == 1

    code, report = classical_doctor(base + "metrics: {enabled: false}\n")
    assert "disabled" in section(report, "Metrics") and code == 0


def test_files_the_config_names_and_a_missing_manifest_are_problems(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_files, "SERVICE_USER", "no-such-user-here")  # this process's user, even as root
    absent = tmp_path / "none.yaml"
    code, report = doctor(
        f"broker: {{url: '{broker.url}', ca_file: '{tmp_path / 'ca.crt'}'}}\nmodels: {{manifest: '{absent}'}}\n"
    )
    config = section(report, "Config")
    assert f"INVALID <config>: broker.ca_file: {tmp_path / 'ca.crt'} does not exist" in config
    assert f"warning: <config>: models.manifest: no model manifest at {absent}" in config
    assert "ABSENT: the gateway judges with the classical assessor and reports degraded" in report
    assert "backend: auto -> classical: no model manifest  (DEGRADED)" in report
    assert code == 1
