"""``check --annotate``: the label is drawn on its own opaque panel, so it reads the same on any photo."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.annotate import annotate
from gateway.protocol import CervixOut, FocusOut, VerdictMessage


def verdict(outcome: str, reasons: list[str]) -> VerdictMessage:
    return VerdictMessage(
        image_id="x",
        site="local",
        device="local",
        verdict=outcome,  # type: ignore[arg-type]
        reasons=reasons,  # type: ignore[arg-type]
        focus=FocusOut(label="not_sharp", sharp_probability=0.12),
        cervix=CervixOut(found=False, box=None, score=0.1),
        backend="classical",
        models={},
        timings_ms={"total": 1.0},
        received_at="2026-11-25T10:00:00.000Z",
        decided_at="2026-11-25T10:00:00.001Z",
    )


def luminance(bgr: np.ndarray) -> float:
    """WCAG relative luminance of one BGR colour."""
    c = bgr[::-1].astype(float) / 255
    linear = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


@pytest.mark.parametrize("outcome,reasons", [("recapture", ["out_of_focus"]), ("accept", []), ("error", ["busy"])])
def test_the_label_is_the_same_on_any_photo_and_has_strong_contrast(outcome: str, reasons: list[str]) -> None:
    rng = np.random.default_rng(0)
    photos = [
        np.full((900, 1200, 3), 255, np.uint8),  # white
        np.zeros((900, 1200, 3), np.uint8),  # black
        np.full((900, 1200, 3), (0, 140, 255), np.uint8),  # the recapture colour itself
        rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8),  # busy texture
    ]
    v = verdict(outcome, reasons)
    drawn = [annotate(photo, v) for photo in photos]
    changed = np.zeros(photos[0].shape[:2], bool)
    for photo, out in zip(photos, drawn, strict=True):
        changed |= (photo != out).any(axis=2)
    ys, xs = np.nonzero(changed)
    top, left, bottom, right = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    assert bottom < 200 and right < 1200  # a label in the top-left corner, not the whole photo
    labels = [out[top:bottom, left:right] for out in drawn]
    for label in labels[1:]:
        assert np.array_equal(label, labels[0])  # opaque: nothing of the photo shows through the label
    colours, counts = np.unique(labels[0].reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    text = max(colours, key=lambda c: abs(luminance(c) - luminance(background)))
    lighter, darker = sorted((luminance(background), luminance(text)), reverse=True)
    assert (lighter + 0.05) / (darker + 0.05) >= 7  # WCAG AAA contrast between the text and its background
