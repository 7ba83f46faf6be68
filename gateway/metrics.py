"""Prometheus metrics and health endpoints: one registry per service, served over HTTP by a small thread.

``/metrics`` (Prometheus text format), ``/healthz`` (200 while the process serves HTTP at all) and ``/readyz``
(200 when connected and subscribed to the broker with a backend loaded, else 503 with the reason).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.backends.slot import BackendSlot
from gateway.config import MetricsConfig
from gateway.connect_failures import CAUSES
from gateway.protocol import Outcome, VerdictMessage

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = structlog.get_logger(__name__)

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGES = {"queue": "waiting in the queue", "decode": "decoding", "inference": "locating and judging", "total": "all"}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _BrokerDropped(Collector):
    """The broker's dropped-message counter as read from $SYS: a counter that only the broker resets (a gateway
    restart reads the same value again); absent until the broker has reported it."""

    def __init__(self) -> None:
        self.total: int | None = None

    def collect(self) -> Iterable[Metric]:
        if self.total is not None:
            family = CounterMetricFamily(
                "colpo_gateway_broker_dropped_messages",
                "Messages the broker dropped because a client's queue was full (max_queued_bytes or"
                " max_queued_messages), since the broker started: $SYS/broker/publish/messages/dropped",
            )
            family.add_metric([], self.total)
            yield family


class Metrics:
    """The gateway's metrics; ``serve()`` starts the HTTP endpoint (when enabled), ``close()`` stops it."""

    def __init__(
        self,
        config: MetricsConfig,
        readiness: Callable[[], str | None],
        queue_depth: Callable[[], int],
        connected: Callable[[], bool],
    ) -> None:
        self._config = config
        self._readiness = readiness
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self._received = Counter("colpo_gateway_photos_received", "Image messages received", registry=r)
        self._verdicts = Counter("colpo_gateway_verdicts", "Verdicts decided, by outcome", ["outcome"], registry=r)
        self._reasons = Counter(
            "colpo_gateway_verdict_reasons", "Reasons given in verdicts", ["outcome", "reason"], registry=r
        )
        self._seconds = {
            stage: Histogram(f"colpo_gateway_{stage}_seconds", f"Time per photo: {what}", buckets=SECONDS, registry=r)
            for stage, what in STAGES.items()
        }
        self._batch = Histogram(
            "colpo_gateway_batch_size",
            "Photos per inference call of each model, batched across devices (none while models.max_batch is 1)",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self._backend = Info("colpo_gateway_backend", "The backend in use and its state", registry=r)
        self._errors = Counter(
            "colpo_gateway_errors",
            "Problems by kind: worker_failed (a photo failed inside the gateway), topic_dropped (a message on a topic"
            " outside the contract)",
            ["kind"],
            registry=r,
        )
        self._connect_failures = Counter(
            "colpo_gateway_connect_failures",
            "Failed attempts to connect to the broker, by cause: " + ", ".join(CAUSES),
            ["cause"],
            registry=r,
        )
        Gauge("colpo_gateway_broker_connected", "1 while connected and subscribed", registry=r).set_function(
            lambda: float(connected())
        )
        Gauge("colpo_gateway_queue_depth", "Photos waiting for a worker", registry=r).set_function(queue_depth)
        self._broker_dropped = _BrokerDropped()
        r.register(self._broker_dropped)
        self._metrics_app = make_wsgi_app(r)
        self._server: WSGIServer | None = None
        self.port: int | None = None
        """The bound port once serving (with ``port: 0``, the one the system chose)."""

    def photo_received(self) -> None:
        self._received.inc()

    def verdict(self, verdict: VerdictMessage) -> None:
        """Count a decided verdict and observe its timings (``timings_ms``: queue, decode, inference, total)."""
        self._verdicts.labels(verdict.verdict).inc()
        for reason in verdict.reasons:
            self._reasons.labels(verdict.verdict, reason).inc()
        for stage, histogram in self._seconds.items():
            if stage in verdict.timings_ms:
                histogram.observe(verdict.timings_ms[stage] / 1e3)

    def batch(self, model: str, rows: int) -> None:
        """One inference call of ``model`` on ``rows`` photos (reported by the batcher)."""
        self._batch.labels(model).observe(rows)

    def decided(self) -> int:
        """Verdicts decided so far."""
        sample = self.registry.get_sample_value
        return sum(int(sample("colpo_gateway_verdicts_total", {"outcome": o.value}) or 0) for o in Outcome)

    def connect_failure(self, cause: str) -> None:
        self._connect_failures.labels(cause).inc()

    def broker_dropped(self, total: int) -> None:
        """The broker's own count of messages dropped for a full client queue (its $SYS counter)."""
        self._broker_dropped.total = total

    def error(self, kind: str) -> None:
        self._errors.labels(kind).inc()

    def backend(self, slot: BackendSlot) -> None:
        self._backend.info({"backend": slot.current.name, "state": slot.state})

    def serve(self) -> None:
        """Start the HTTP endpoint; a port that cannot be bound is logged and the gateway runs on without it."""
        if not self._config.enabled or self._server is not None:
            return
        host, port = self._config.host, self._config.port
        server_class = _Server6 if ":" in host else _Server
        try:
            server = make_server(host, port, self._app, server_class, _QuietHandler)
        except OSError as exc:
            log.error("metrics_unavailable", host=host, port=port, why=str(exc))
            return
        self._server, self.port = server, int(server.server_address[1])
        threading.Thread(target=server.serve_forever, args=(0.5,), name="metrics-http", daemon=True).start()
        log.info("metrics_serving", url=f"http://{host}:{self.port}/metrics")

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body = "200 OK", "alive"
        elif path == "/readyz":
            why = self._readiness()
            status, body = ("200 OK", "ready") if why is None else ("503 Service Unavailable", why)
        else:
            status, body = "404 Not Found", "not found: /metrics, /healthz, /readyz"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{body}\n".encode()]
