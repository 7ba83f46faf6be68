"""structlog set-up: JSON lines off a terminal (journald, files), readable lines on one. Never image bytes."""

from __future__ import annotations

import logging
import sys
import threading

import structlog

from gateway.config import LoggingConfig


class _StderrLogger:
    """Prints each line to ``sys.stderr`` as it is when the line is logged, not when logging was configured: a
    logger cached on first use would otherwise keep a stream that was replaced and closed since (pytest's capture
    does this to every test after the one that configured logging)."""

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = err = critical = exception = fatal = failure = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(config: LoggingConfig) -> None:
    as_json = config.format == "json" or (config.format == "auto" and not sys.stderr.isatty())
    renderers: list[structlog.typing.Processor] = (
        [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        if as_json
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.UnicodeDecoder(),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, config.level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
