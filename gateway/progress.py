"""Engine-build progress: a bar on a terminal, periodic log lines under systemd (or any non-terminal).

TensorRT 10 reports nested phases through ``IProgressMonitor`` (``gateway/engines/build.py`` adapts it to
this class); nothing here imports TensorRT, so it is tested on any machine. TensorRT calls it from several
threads: every method takes the lock. ``cancel()`` makes the next ``step_complete`` ask TensorRT to stop.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import structlog

log = structlog.get_logger(__name__)


@dataclass
class _Phase:
    name: str
    parent: str | None
    steps: int
    done: int = 0


class BuildProgress:
    def __init__(
        self,
        label: str,
        interactive: bool | None = None,
        stream: TextIO | None = None,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self._stream = stream if stream is not None else sys.stderr
        self.interactive = self._stream.isatty() if interactive is None else interactive
        self._interval = interval_s
        self._clock = clock
        self._started = clock()
        self._last_log = -float("inf")
        self._phases: dict[str, _Phase] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self.lines: list[str] = []
        """What was written (the bar's states, or the log lines' text), for tests and summaries."""

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        with self._lock:
            self._phases[name] = _Phase(name, parent, max(1, steps))
            self._report(force=parent is None)

    def step_complete(self, name: str, step: int) -> bool:
        """Record a finished step; False asks TensorRT to cancel the build."""
        with self._lock:
            if phase := self._phases.get(name):
                phase.done = min(phase.steps, step + 1)
            self._report()
        return not self._cancelled.is_set()

    def phase_finish(self, name: str) -> None:
        with self._lock:
            phase = self._phases.pop(name, None)
            if phase is not None and phase.parent is None:
                self._report(force=True, finished=phase)

    def close(self) -> None:
        if self.interactive:
            self._stream.write("\n")
            self._stream.flush()

    def fraction(self) -> float:
        """Overall progress 0..1 of the outermost phase, refined by its running sub-phases."""
        roots = [p for p in self._phases.values() if p.parent is None]
        if not roots:
            return 0.0
        fraction, span = 0.0, 1.0
        phase: _Phase | None = roots[0]
        while phase is not None:
            fraction += span * phase.done / phase.steps
            span /= phase.steps
            phase = next((p for p in self._phases.values() if p.parent == phase.name), None)
        return min(1.0, fraction)

    def _chain(self) -> str:
        roots = [p for p in self._phases.values() if p.parent is None]
        names, phase = [], roots[0] if roots else None
        while phase is not None:
            names.append(f"{phase.name} {phase.done}/{phase.steps}")
            phase = next((p for p in self._phases.values() if p.parent == phase.name), None)
        return " > ".join(names)

    def _report(self, force: bool = False, finished: _Phase | None = None) -> None:
        elapsed = self._clock() - self._started
        if self.interactive:
            width = 30
            filled = round(self.fraction() * width) if finished is None else width
            text = finished.name + " done" if finished is not None else self._chain()
            line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {elapsed:5.0f}s {text}"[:150]
            self.lines.append(line)
            self._stream.write("\r" + line.ljust(150))
            self._stream.flush()
            return
        if not force and elapsed - self._last_log < self._interval:
            return
        self._last_log = elapsed
        text = f"{finished.name} done" if finished is not None else self._chain()
        self.lines.append(text)
        log.info(
            "engine_build_progress",
            model=self.label,
            percent=round(self.fraction() * 100) if finished is None else 100,
            phase=text,
            elapsed_s=round(elapsed),
        )
