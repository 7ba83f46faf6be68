"""Logging set-up: lines go to the stderr of the moment, never to a stream replaced since."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from gateway.config import LoggingConfig
from gateway.logs import configure_logging


def test_a_cached_logger_follows_stderr_when_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging(LoggingConfig(format="json"))
    log = structlog.get_logger("test_logs")
    log.info("first_line", n=1)  # cached on first use, while stderr is `first`
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    log.warning("second_line", n=2)
    line = json.loads(second.getvalue())
    assert (line["event"], line["n"], line["level"]) == ("second_line", 2, "warning")
