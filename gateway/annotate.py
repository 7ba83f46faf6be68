"""Draw a verdict on its photo (cervix box, focus score, outcome and reasons) for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from gateway.protocol import VerdictMessage

_COLOURS = {"accept": (60, 180, 60), "recapture": (0, 140, 255), "error": (0, 0, 220)}  # BGR
_PANEL = (0, 0, 0)
_TEXT = (255, 255, 255)
"""White on an opaque black panel: readable on any photo; a stripe of the verdict's colour keeps the colour code."""


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
    font, weight = cv2.FONT_HERSHEY_SIMPLEX, max(1, thick - 1)
    step = round(34 * scale)
    stripe, pad = thick * 3, thick * 2
    text_w = max(cv2.getTextSize(text, font, scale, weight)[0][0] for text in lines)
    panel_w, panel_h = stripe + 2 * pad + text_w, len(lines) * step + 2 * pad
    cv2.rectangle(out, (0, 0), (panel_w, panel_h), _PANEL, cv2.FILLED)
    cv2.rectangle(out, (0, 0), (stripe, panel_h), colour, cv2.FILLED)
    for n, text in enumerate(lines):
        org = (stripe + pad, pad + (n + 1) * step - round(8 * scale))
        cv2.putText(out, text, org, font, scale, _TEXT, weight, cv2.LINE_AA)
    return np.asarray(out)
