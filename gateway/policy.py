"""Assessment -> decision: the verdict, its reasons and the operator's guidance.

The operator is never stuck: a focus score just under the threshold is accepted with ``borderline_focus``,
and after ``max_consecutive_recaptures`` recapture requests in a row for one device the next photo is
accepted with ``recapture_limit``, naming the best photo of the run in ``best_image_id``. With a ``RunBook`` (the
verdict store), each device's run is kept there too, so that a restart does not reset the operator's count.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.assessment import Assessment
from gateway.config import PolicyConfig
from gateway.protocol import Outcome, Reason

GUIDANCE: dict[Reason, str] = {
    Reason.CERVIX_NOT_FOUND: "Centre the cervix in the view so that it fills about half the frame.",
    Reason.MOTION_BLUR: "Hold the phone still while the photo is taken: movement blurred it.",
    Reason.DEFOCUS: "Tap the cervix to focus before taking the photo: it is out of focus.",
    Reason.TOO_DARK: "Turn the light up or move a little closer: the photo is too dark.",
    Reason.OVEREXPOSED: "Turn the light down or tilt the camera slightly to avoid glare: the photo is too bright.",
}
"""One short sentence per reason that asks for a recapture, in the order they are shown; ``out_of_focus`` is
guided by its type (``motion_blur`` or ``defocus``)."""

DeviceKey = tuple[str, str]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reasons: list[Reason]
    focus_label: Literal["sharp", "not_sharp"]
    guidance: list[str] = field(default_factory=list)
    best_image_id: str | None = None


@dataclass
class _Run:
    """Consecutive recapture requests sent to one device, and the best photo among them."""

    recaptures: int = 0
    best_image_id: str | None = None
    best_quality: tuple[bool, bool, float] = (False, False, -1.0)
    last_seen: float = 0.0


class RunBook(Protocol):
    """Where runs outlive the process: a device's run as opaque text, forgotten when idle past ``max_idle_s``."""

    def load_run(self, site: str, device: str, max_idle_s: float) -> str | None: ...

    def save_run(self, site: str, device: str, run: str | None) -> None: ...


def _run_text(run: _Run) -> str:
    return json.dumps({"recaptures": run.recaptures, "best": run.best_image_id, "quality": run.best_quality})


def _run_from(text: str, now: float) -> _Run | None:
    try:
        saved = json.loads(text)
        cervix, exposure, sharp = saved["quality"]
        quality = (bool(cervix), bool(exposure), float(sharp))
        return _Run(int(saved["recaptures"]), saved["best"], quality, now)
    except (ValueError, KeyError, TypeError):
        return None


def _guidance(reasons: list[Reason]) -> list[str]:
    return [GUIDANCE[r] for r in reasons if r in GUIDANCE]


def _quality(assessment: Assessment) -> tuple[bool, bool, float]:
    """Orders photos of a run: cervix found first, then well exposed, then sharper."""
    exposure_ok = not (assessment.exposure.too_dark or assessment.exposure.overexposed)
    return assessment.cervix.found, exposure_ok, assessment.focus.sharp_probability


class Policy:
    """Thread-safe; holds the per-device run state (in memory, and in a ``RunBook`` once given one)."""

    def __init__(self, config: PolicyConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._runs: dict[DeviceKey, _Run] = {}
        self._lock = threading.Lock()
        self._book: RunBook | None = None

    def keep_runs_in(self, book: RunBook) -> None:
        """Save each device's run in ``book`` and take it from there after a restart."""
        self._book = book

    def _save(self, device: DeviceKey, run: _Run | None) -> None:
        if self._book is not None:
            self._book.save_run(*device, _run_text(run) if run else None)

    def decide(self, device: DeviceKey | None, image_id: str, assessment: Assessment) -> Decision:
        """Decide one photo; ``device`` None judges it alone (no run, as ``check`` does)."""
        cfg = self._config
        p = assessment.focus.sharp_probability
        label: Literal["sharp", "not_sharp"] = "sharp" if p >= cfg.sharp_threshold else "not_sharp"
        reasons: list[Reason] = []
        if not assessment.cervix.found:
            reasons.append(Reason.CERVIX_NOT_FOUND)
        if p < cfg.out_of_focus_below:
            motion = assessment.focus.blur_type == "motion"
            reasons += [Reason.OUT_OF_FOCUS, Reason.MOTION_BLUR if motion else Reason.DEFOCUS]
        if assessment.exposure.too_dark:
            reasons.append(Reason.TOO_DARK)
        if assessment.exposure.overexposed:
            reasons.append(Reason.OVEREXPOSED)
        if not reasons:
            borderline = [Reason.BORDERLINE_FOCUS] if p < cfg.sharp_threshold else []
            if device is not None:
                with self._lock:
                    self._runs.pop(device, None)
                    self._save(device, None)
            return Decision(Outcome.ACCEPT, borderline, label)
        if device is None:
            return Decision(Outcome.RECAPTURE, reasons, label, _guidance(reasons))
        return self._recapture_or_give_up(device, image_id, assessment, reasons, label)

    def _recapture_or_give_up(
        self,
        device: DeviceKey,
        image_id: str,
        assessment: Assessment,
        reasons: list[Reason],
        label: Literal["sharp", "not_sharp"],
    ) -> Decision:
        now = self._clock()
        quality = _quality(assessment)
        with self._lock:
            self._forget_idle(now)
            run = self._runs.get(device) or self._saved_run(device, now) or _Run()
            self._runs[device] = run
            run.last_seen = now
            if quality > run.best_quality:
                run.best_quality, run.best_image_id = quality, image_id
            if run.recaptures >= self._config.max_consecutive_recaptures:
                best = run.best_image_id
                del self._runs[device]
                self._save(device, None)
                return Decision(Outcome.ACCEPT, [Reason.RECAPTURE_LIMIT, *reasons], label, best_image_id=best)
            run.recaptures += 1
            self._save(device, run)
        return Decision(Outcome.RECAPTURE, reasons, label, _guidance(reasons))

    def _saved_run(self, device: DeviceKey, now: float) -> _Run | None:
        """The run kept in the book (from before a restart), if not idle past the run timeout."""
        if self._book is None:
            return None
        text = self._book.load_run(*device, self._config.run_timeout_s)
        return _run_from(text, now) if text is not None else None

    def _forget_idle(self, now: float) -> None:
        """Drop runs of devices idle past the run timeout (bounds memory; caller holds the lock)."""
        timeout = self._config.run_timeout_s
        for key in [k for k, run in self._runs.items() if now - run.last_seen > timeout]:
            del self._runs[key]
