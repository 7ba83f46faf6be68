"""The backend in use, swappable at run time: ONNX Runtime serves while TensorRT plans build, then TensorRT.

Readers take ``slot.current`` once per photo (an atomic attribute read) and use that backend throughout, so a
switch-over never mixes two backends in one verdict. ``state`` is ``online`` or ``degraded`` (the configured
or preferred backend could not be had; ``reason`` says why) and goes into the availability status.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

import structlog

from gateway.backends.base import Backend
from gateway.backends.batching import BatchListeners

log = structlog.get_logger(__name__)

State = Literal["online", "degraded"]


class BackendSlot:
    def __init__(self, backend: Backend, reason: str, state: State = "online") -> None:
        self._backend = backend
        self.reason = reason
        self.state: State = state
        self._lock = threading.Lock()
        self._listeners: list[Callable[[BackendSlot], None]] = []
        self._closers: list[Callable[[], None]] = []
        self._pending = 0
        self._settled = threading.Condition(self._lock)
        self.batches = BatchListeners()
        """The batchers of this slot's backends report each batch here (model name, rows)."""

    @property
    def current(self) -> Backend:
        return self._backend

    def swap(self, backend: Backend, reason: str) -> None:
        """Switch to ``backend`` (state ``online``) and tell the listeners."""
        with self._lock:
            previous, self._backend = self._backend.name, backend
            self.reason, self.state = reason, "online"
        log.info(
            "backend_switched", previous=previous, backend=backend.name, models=dict(backend.models), reason=reason
        )
        self._notify()

    def degrade(self, reason: str) -> None:
        """Keep the current backend but report ``degraded`` with ``reason``."""
        with self._lock:
            self.reason, self.state = reason, "degraded"
        log.warning("backend_degraded", backend=self._backend.name, reason=reason)
        self._notify()

    def on_change(self, listener: Callable[[BackendSlot], None]) -> None:
        """Call ``listener(slot)`` after every swap or degradation (e.g. to republish the status)."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:
                log.exception("backend_listener_failed")

    def begin_task(self, closer: Callable[[], None]) -> None:
        """Register background work (an engine build); ``closer`` cancels it on ``close``."""
        with self._lock:
            self._pending += 1
            self._closers.append(closer)

    def end_task(self) -> None:
        with self._lock:
            self._pending -= 1
            self._settled.notify_all()

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait until no background work is pending; False on timeout."""
        with self._lock:
            return self._settled.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Cancel background work (a running engine build)."""
        for closer in list(self._closers):
            try:
                closer()
            except Exception:
                log.exception("backend_close_failed")
