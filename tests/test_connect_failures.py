"""A gateway that cannot reach its broker says why: each cause against a real Mosquitto (or nothing), the log
rate, the metric, /readyz and the doctor."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.connect_failures import ConnectFailure, FailureLog
from gateway.doctor import run_doctor
from gateway.judge import build_judge
from gateway.service import GatewayService
from tests.certs import CertificateAuthority
from tests.conftest import free_port, start_mosquitto
from tests.test_broker_security import GATEWAY, render_shipped_config, shipped_files


@dataclass
class Shipped:
    plain: int
    tls: int
    ca: Path
    rogue_ca: Path


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    """The shipped clinic.conf (passwords, TLS listeners) on free ports."""
    work = tmp_path_factory.mktemp("connect-failures")
    files = shipped_files(work)
    rogue = CertificateAuthority.create(work / "rogue", "rogue-ca")
    plain, tls, mtls = free_port(), free_port(), free_port()
    (work / "data").mkdir()
    conf = render_shipped_config({"1883": plain, "8883": tls, "8884": mtls}, files.paths, work / "data")
    broker = start_mosquitto(work / "broker", conf, port=plain, defaults=False)
    yield Shipped(plain, tls, files.ca.cert, rogue.cert)
    broker.stop()


def gateway_config(tmp_path: Path, broker: dict[str, Any]) -> GatewayConfig:
    return parse_config(
        "",
        "<test>",
        {
            "gateway_id": "gw-fail",
            "backend": "classical",
            "broker": broker,
            "processing": {"workers": 1},
            "store": {"path": str(tmp_path / "verdicts.sqlite3")},
            "metrics": {"port": 0},
        },
    )


def wait_for_failure(service: GatewayService, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        why = service.readiness() or ""
        if "last attempt" in why:
            return why
        time.sleep(0.1)
    raise AssertionError(f"no connect failure within {timeout_s} s: {service.readiness()}")


def scrape(port: int | None, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


CASES = {
    "nothing listening": (lambda s, _pw: {"url": f"mqtt://127.0.0.1:{free_port()}"}, "refused", "nothing listens at"),
    "wrong CA": (
        lambda s, _pw: {"url": f"mqtts://127.0.0.1:{s.tls}", "ca_file": str(s.rogue_ca)},
        "tls_verification",
        "presented a certificate for CN=localhost issued by CN=clinic-ca",
    ),
    "a port without TLS": (
        lambda s, _pw: {"url": f"mqtts://127.0.0.1:{s.plain}", "ca_file": str(s.ca)},
        "tls_handshake",
        "does that port speak TLS (mqtts://)?",
    ),
    "bad credentials": (
        lambda s, pw: {"url": f"mqtt://127.0.0.1:{s.plain}", "username": GATEWAY, "password_file": str(pw)},
        "bad_credentials",
        f"to username '{GATEWAY}'",
    ),
    "a name that does not resolve": (
        lambda s, _pw: {"url": "mqtt://colposcopy-broker.invalid:1883"},
        "dns",
        "'colposcopy-broker.invalid' does not resolve",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_cause_is_named_in_readyz_metrics_and_doctor(case: str, shipped: Shipped, tmp_path: Path) -> None:
    make, cause, words = CASES[case]
    wrong_password = tmp_path / "password"
    wrong_password.write_text("not-the-password\n")
    config = gateway_config(tmp_path, make(shipped, wrong_password))
    service = GatewayService(config, build_judge(config))
    service.start()
    try:
        why = wait_for_failure(service)
        assert why.startswith(f"waiting for broker at {config.broker.url} (last attempt: {cause}: "), why
        assert words in why, why
        status, body = scrape(service.metrics_port, "/readyz")
        assert (status, body.strip()) == (503, why)
        _, metrics = scrape(service.metrics_port, "/metrics")
        counted = [line for line in metrics.splitlines() if line.startswith("colpo_gateway_connect_failures_total{")]
        assert counted and all(f'cause="{cause}"' in line for line in counted), counted
        assert float(counted[0].split()[-1]) >= 1
        out = io.StringIO()
        doctor_config = config.model_copy(
            update={"metrics": config.metrics.model_copy(update={"port": service.metrics_port})}
        )
        run_doctor(doctor_config, out, tensorrt=lambda: (None, "not installed"))
        assert f"the running gateway: NOT READY: {why}" in out.getvalue()
        assert f"unreachable: {cause}: " in out.getvalue() or f"refused: {cause}: " in out.getvalue()
    finally:
        service.stop(grace_s=1)


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_each_change_of_cause_is_logged_and_repeats_once_a_minute_with_a_count() -> None:
    now = [0.0]
    logger = RecordingLogger()
    counted: list[str] = []
    failures = FailureLog("mqtt://broker:1883", lambda f: counted.append(f.cause), clock=lambda: now[0], logger=logger)
    refused = ConnectFailure("refused", "nothing listens at broker:1883 (connection refused)")
    for at in (0, 1, 3, 7, 15, 30, 59):  # paho's backoff: 1, 2, 4, ... 30 s
        now[0] = at
        failures.failed(refused)
    assert logger.lines == [
        ("broker_connect_failed", {"broker": "mqtt://broker:1883", "cause": "refused", "detail": refused.detail})
    ]
    now[0] = 61
    failures.failed(refused)
    assert logger.lines[-1] == (
        "broker_connect_failed",
        {"broker": "mqtt://broker:1883", "cause": "refused", "detail": refused.detail, "repeated": 7, "over_s": 61},
    )
    now[0] = 62
    failures.failed(ConnectFailure("timeout", "no answer"))  # a new cause: at once
    assert logger.lines[-1][1]["cause"] == "timeout" and len(logger.lines) == 3
    failures.connected()
    assert logger.lines[-1] == ("broker_connect_recovered", {"broker": "mqtt://broker:1883", "after": "timeout"})
    assert failures.last is None
    now[0] = 63
    failures.failed(refused)  # after a connection, the first failure is news again
    assert len(logger.lines) == 5 and logger.lines[-1][1]["cause"] == "refused"
    assert counted == ["refused"] * 8 + ["timeout", "refused"]  # the metric counts every attempt
