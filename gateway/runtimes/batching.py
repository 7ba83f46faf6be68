"""Cross-device dynamic batching in front of a runtime, as Triton's dynamic batcher does.

Workers judge photos from different devices at the same time; each calls ``run`` with a batch of one. A
``BatchingRuntime`` hands those calls to one dispatcher thread, which runs together whatever has queued up (at
most ``max_batch`` rows, waiting at most ``max_wait_ms`` after the first for more), then gives each caller its
rows. With ``max_wait_ms: 0`` nothing ever waits: a lone photo runs at once, and batches form only from calls
that queued while the engine was busy, so batching costs no latency. Input buffers for a batch are allocated
once and reused.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import structlog

from gateway.runtimes.runtime import InferenceError, Runtime, Wrapper

log = structlog.get_logger(__name__)


class BatchListeners:
    """Where batchers report each batch they run (model name, rows), for whoever subscribes (the metrics)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[str, int], None]] = []

    def subscribe(self, listener: Callable[[str, int], None]) -> None:
        self._listeners.append(listener)

    def reporter(self, model: str) -> Callable[[int], None]:
        """The ``on_batch`` callback for the batcher of ``model``."""

        def report(rows: int) -> None:
            for listener in self._listeners:
                try:
                    listener(model, rows)
                except Exception:
                    log.exception("batch_listener_failed", model=model)

        return report


@dataclass
class _Call:
    inputs: Mapping[str, np.ndarray]
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class BatchingRuntime(Wrapper):
    """A ``Runtime`` that batches concurrent calls to ``inner`` (whose batch dimension must be dynamic)."""

    def __init__(
        self,
        inner: Runtime,
        max_batch: int,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(inner)
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1e3
        self._on_batch = on_batch
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._carry: _Call | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.call_timeout_s = 120.0
        """The longest a caller waits for its rows (then InferenceError): no wait is unbounded."""
        self._buffers: dict[str, np.ndarray] = {}
        self._thread = threading.Thread(target=self._dispatch, name=f"batcher-{inner.engine}", daemon=True)
        self._thread.start()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        call = _Call(inputs, rows)
        with self._lock:  # never queued behind close's None: nobody would answer it
            if self._closed:
                raise InferenceError(f"{self.inner.engine} batcher: the runtime is closed")
            if rows < self._max_batch:
                self._calls.put(call)
        if rows >= self._max_batch:
            return self.inner.run(inputs)
        if not call.done.wait(self.call_timeout_s):
            raise InferenceError(f"{self.inner.engine} batcher: no answer within {self.call_timeout_s:.0f} s")
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def close(self) -> None:
        """Run the calls queued so far, then close the runtime behind (the dispatcher waited at most 5 s)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._calls.put(None)
        self._thread.join(5)
        closed = InferenceError(f"{self.inner.engine} batcher: the runtime is closed")
        leftover: list[_Call | None] = [self._carry] if self._carry is not None and not self._thread.is_alive() else []
        while True:
            try:
                leftover.append(self._calls.get_nowait())
            except queue.Empty:
                break
        for call in leftover:
            if call is not None:
                call.error = closed
                call.done.set()
        self._calls.put(None)  # the stop marker back, for a dispatcher still inside inner.run to find
        self.inner.close()

    def _next(self, timeout: float | None) -> _Call | None:
        if self._carry is not None:
            call, self._carry = self._carry, None
            return call
        if timeout is None:
            return self._calls.get()
        return self._calls.get(timeout=timeout) if timeout > 0 else self._calls.get_nowait()

    def _gather(self, first: _Call) -> list[_Call]:
        """``first`` and the calls queued behind it (waiting at most ``max_wait_ms``), up to ``max_batch`` rows."""
        batch, rows = [first], first.rows
        deadline = time.monotonic() + self._max_wait_s
        while rows < self._max_batch:
            try:
                call = self._next(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if call is None:
                self._calls.put(None)  # close after this batch
                break
            if rows + call.rows > self._max_batch:
                self._carry = call
                break
            batch.append(call)
            rows += call.rows
        return batch

    def _dispatch(self) -> None:
        while (first := self._next(None)) is not None:
            batch = self._gather(first)
            try:
                self._run(batch)
            except BaseException as exc:  # every caller hears of it; the dispatcher goes on
                for call in batch:
                    call.error = exc if isinstance(exc, InferenceError) else InferenceError(f"batch failed: {exc}")
                    call.done.set()

    def _run(self, batch: list[_Call]) -> None:
        rows = sum(call.rows for call in batch)
        if self._on_batch is not None:
            self._on_batch(rows)
        if len(batch) == 1:
            feeds: Mapping[str, np.ndarray] = batch[0].inputs
        else:
            feeds = {name: self._stack(name, [call.inputs[name] for call in batch], rows) for name in batch[0].inputs}
        out = self.inner.run(feeds)
        start = 0
        for call in batch:
            call.result = {name: value[start : start + call.rows] for name, value in out.items()}
            start += call.rows
            call.done.set()

    def _stack(self, name: str, parts: list[np.ndarray], rows: int) -> np.ndarray:
        """The parts one after another in a reused buffer of ``max_batch`` rows."""
        head = parts[0]
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[1:] != head.shape[1:] or buffer.dtype != head.dtype:
            buffer = self._buffers[name] = np.empty((self._max_batch, *head.shape[1:]), head.dtype)
        np.concatenate(parts, axis=0, out=buffer[:rows])
        return buffer[:rows]


def batched(
    runtime: Runtime, max_batch: int, max_wait_ms: float, on_batch: Callable[[int], None] | None = None
) -> Runtime:
    """``runtime`` behind a batcher when batching is on (``max_batch`` > 1) and its batch dimension is dynamic."""
    dynamic = all(info.shape and info.shape[0] is None for info in runtime.inputs)
    if max_batch <= 1 or not dynamic:
        return runtime
    return BatchingRuntime(runtime, max_batch, max_wait_ms, on_batch)
