"""The backend in use, swappable at run time: ONNX Runtime serves while TensorRT plans build, then TensorRT.

Readers take ``slot.acquire()`` once per photo and use that backend throughout, so a switch-over never mixes two
backends in one verdict; ``release`` it after. A replaced backend is closed once the photos that hold it are done
(waiting at most ``retire_wait_s``), and ``close`` closes the last one. ``state`` is ``online`` or ``degraded``
(the configured or preferred backend could not be had; ``reason`` says why) and goes into the availability status.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

import structlog

from gateway.backends.base import Backend
from gateway.runtimes.batching import BatchListeners

log = structlog.get_logger(__name__)

State = Literal["online", "degraded"]


class BackendSlot:
    def __init__(self, backend: Backend, reason: str, state: State = "online", retire_wait_s: float = 30.0) -> None:
        self._backend = backend
        self.retire_wait_s = retire_wait_s
        self._users: dict[int, int] = {}
        """id(backend) -> photos holding it."""
        self._closed = False
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

    def acquire(self) -> Backend:
        """The current backend, held until ``release``: it is not closed while held (within ``retire_wait_s``)."""
        with self._lock:
            backend = self._backend
            self._users[id(backend)] = self._users.get(id(backend), 0) + 1
            return backend

    def release(self, backend: Backend) -> None:
        with self._lock:
            left = self._users.get(id(backend), 0) - 1
            if left > 0:
                self._users[id(backend)] = left
            else:
                self._users.pop(id(backend), None)
            self._settled.notify_all()

    def swap(self, backend: Backend, reason: str, state: State = "online") -> None:
        """Switch to ``backend``, tell the listeners, then close the previous one once the photos holding it are done
        (this call waits for that, at most ``retire_wait_s``). After ``close``, ``backend`` is closed instead."""
        with self._lock:
            if self._closed:
                previous = backend
            else:
                previous, self._backend = self._backend, backend
                self.reason, self.state = reason, state
        if previous is backend:
            backend.close()
            return
        log.info(
            "backend_switched",
            previous=previous.name,
            backend=backend.name,
            models=dict(backend.models),
            state=state,
            reason=reason,
        )
        self._notify()
        self._retire(previous)

    def _retire(self, backend: Backend) -> None:
        with self._lock:
            done = self._settled.wait_for(lambda: id(backend) not in self._users, self.retire_wait_s)
        if not done:
            log.warning("backend_still_in_use", backend=backend.name, waited_s=self.retire_wait_s)
        backend.close()
        log.info("backend_closed", backend=backend.name)

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
        """Cancel background work (a running engine build), then close the backend once no photo holds it."""
        for closer in list(self._closers):
            try:
                closer()
            except Exception:
                log.exception("backend_close_failed")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._retire(self._backend)
