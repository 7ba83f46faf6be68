"""Draw a verdict on its photo (cervix box, focus score, outcome and reasons) for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from gateway.protocol import VerdictMessage

_COLOURS = {"accept": (60, 180, 60), "recapture": (0, 140, 255), "error": (0, 0, 220)}  # BGR


def annotate(image: np.ndarray, verdict: VerdictMessage) -> np.ndarray:
    out = image.copy()
    h, w = out.shape[:2]
    colour = _COLOURS[str(verdict.verdict)]
    thick = max(2, round(max(h, w) / 400))
    if verdict.cervix is not None and verdict.cervix.box is not None:
        x0, y0, x1, y1 = verdict.cervix.box
        cv2.rectangle(out, (round(x0 * w), round(y0 * h)), (round(x1 * w), round(y1 * h)), colour, thick)
    focus = f"sharp p={verdict.focus.sharp_probability:.2f}" if verdict.focus else "focus n/a"
    lines = [f"{verdict.verdict.upper()}  {focus}", ", ".join(str(r) for r in verdict.reasons) or "no issues"]
    scale = max(0.5, max(h, w) / 1400)
    for n, text in enumerate(lines):
        org = (thick * 4, round((n + 1) * 34 * scale))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 3, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return np.asarray(out)
