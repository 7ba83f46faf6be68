"""Why the broker cannot be reached, in words an installer can act on, logged once per change of cause.

A failed connection attempt is named by its cause (the label of ``colpo_gateway_connect_failures_total``):
``refused`` (nothing listens there), ``timeout``, ``dns`` (the host name does not resolve), ``tls_verification``
(the broker's certificate is not trusted: the detail names its subject and issuer), ``tls_handshake`` (e.g. a port
that does not speak TLS), ``bad_credentials`` (the broker refused the username or password), ``broker_refused``
(another CONNACK refusal) or ``unreachable`` (any other network error).

``FailureLog`` logs the first failure of each cause at once and then repeats of the same cause at most once a
``repeat_s`` (a minute), with how many attempts failed meanwhile, so a broker that stays away for a night writes a
few hundred lines rather than one per reconnect attempt, and none is silent.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.config import BrokerConfig

log = structlog.get_logger(__name__)

CAUSES = (
    "refused",
    "timeout",
    "dns",
    "tls_verification",
    "tls_handshake",
    "bad_credentials",
    "broker_refused",
    "unreachable",
)

_BAD_CREDENTIALS = (0x86, 0x87)  # MQTT 5 "Bad user name or password", "Not authorized" (Mosquitto's answer to both)


@dataclass(frozen=True)
class ConnectFailure:
    cause: str
    detail: str

    def describe(self) -> str:
        return f"{self.cause}: {self.detail}"


def from_exception(exc: BaseException | None, broker: BrokerConfig) -> ConnectFailure:
    """The cause of a failed TCP connect or TLS handshake (what paho's ``reconnect`` raised)."""
    where = f"{broker.host}:{broker.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        subject = peer_certificate(broker)
        presented = f"; the broker presented {subject}" if subject else ""
        trusted = f"CA file {broker.ca_file}" if broker.ca_file else "the system CA store"
        return ConnectFailure("tls_verification", f"{exc.verify_message} (checked against {trusted}){presented}")
    if broker.tls and isinstance(exc, (ssl.SSLError, ConnectionResetError, ConnectionAbortedError, EOFError)):
        return ConnectFailure(
            "tls_handshake", f"the TLS handshake with {where} failed ({exc}): does that port speak TLS (mqtts://)?"
        )
    if isinstance(exc, socket.gaierror):
        return ConnectFailure("dns", f"the host name {broker.host!r} does not resolve ({exc.strerror})")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure("refused", f"nothing listens at {where} (connection refused)")
    if isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT):
        return ConnectFailure("timeout", f"no answer from {where} (timed out)")
    return ConnectFailure("unreachable", f"{where}: {exc}")


def from_connack(reason: Any, broker: BrokerConfig) -> ConnectFailure:
    """The cause of a CONNACK refusal (paho's ReasonCode)."""
    code = int(getattr(reason, "value", 0))
    if code in _BAD_CREDENTIALS:
        who = f"username {broker.username!r}" if broker.username else "no username (anonymous)"
        return ConnectFailure("bad_credentials", f"the broker answered {str(reason)!r} to {who}")
    return ConnectFailure("broker_refused", f"the broker refused the connection: {reason}")


def peer_certificate(broker: BrokerConfig, timeout_s: float = 5.0) -> str | None:
    """Subject and issuer of the certificate the broker presents, read without verifying it; None if unreadable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        if broker.cert_file is not None:
            context.load_cert_chain(str(broker.cert_file), str(broker.key_file) if broker.key_file else None)
        with (
            socket.create_connection((broker.host, broker.port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=broker.host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    if not der:
        return None
    try:
        subject, issuer = _names(der)
    except (IndexError, ValueError):
        return None
    return f"a certificate for {subject or '(no subject)'} issued by {issuer or '(no issuer)'}"


_ATTRIBUTES = {b"\x55\x04\x03": "CN", b"\x55\x04\x0a": "O", b"\x55\x04\x0b": "OU", b"\x55\x04\x06": "C"}


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """One DER element at ``at``: its tag, where its content starts and where it ends."""
    tag, length, start = data[at], data[at + 1], at + 2
    if length & 0x80:
        size = length & 0x7F
        length, start = int.from_bytes(data[start : start + size], "big"), start + size
    return tag, start, start + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _tlv(data, start)
        out.append(element)
        start = element[2]
    return out


def _name(data: bytes, start: int, end: int) -> str:
    """An X.509 Name (a SEQUENCE of SETs of (OID, value)) as ``CN=..., O=...``."""
    parts = []
    for _set, s_start, s_end in _children(data, start, end):
        for _seq, a_start, a_end in _children(data, s_start, s_end):
            (_t, o_start, o_end), (_v, v_start, v_end) = _children(data, a_start, a_end)[:2]
            label = _ATTRIBUTES.get(data[o_start:o_end])
            if label:
                parts.append(f"{label}={data[v_start:v_end].decode('utf-8', 'replace')}")
    return ", ".join(parts)


def _names(der: bytes) -> tuple[str, str]:
    """Subject and issuer of a DER certificate (just enough DER for a log line)."""
    _tag, c_start, c_end = _tlv(der, 0)
    _tag, t_start, t_end = _children(der, c_start, c_end)[0]  # tbsCertificate
    fields = _children(der, t_start, t_end)
    if fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    issuer, subject = fields[2], fields[4]  # serial, signature algorithm, issuer, validity, subject
    return _name(der, subject[1], subject[2]), _name(der, issuer[1], issuer[2])


class FailureLog:
    """Logs connect failures: each change of cause at once, repeats at most once a ``repeat_s`` with a count."""

    def __init__(
        self,
        broker_url: str,
        on_failure: Callable[[ConnectFailure], None] | None = None,
        repeat_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        self._url = broker_url
        self._log = logger if logger is not None else log
        self._on_failure = on_failure
        self._repeat_s = repeat_s
        self._clock = clock
        self._lock = threading.Lock()
        self._logged_at = 0.0
        self._repeats = 0
        self.last: ConnectFailure | None = None
        """The latest failure; None once connected."""

    def failed(self, failure: ConnectFailure) -> None:
        now = self._clock()
        with self._lock:
            changed = self.last is None or self.last.cause != failure.cause
            self.last = failure
            if changed:
                self._logged_at, self._repeats = now, 0
                self._log.error("broker_connect_failed", broker=self._url, cause=failure.cause, detail=failure.detail)
            else:
                self._repeats += 1
                if now - self._logged_at >= self._repeat_s:
                    self._log.error(
                        "broker_connect_failed",
                        broker=self._url,
                        cause=failure.cause,
                        detail=failure.detail,
                        repeated=self._repeats,
                        over_s=round(now - self._logged_at),
                    )
                    self._logged_at, self._repeats = now, 0
        if self._on_failure is not None:
            self._on_failure(failure)

    def connected(self) -> None:
        with self._lock:
            if self.last is not None:
                self._log.info("broker_connect_recovered", broker=self._url, after=self.last.cause)
            self.last = None
