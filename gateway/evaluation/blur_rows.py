"""The independent blur generator's rows of ``colpo-gateway evaluate``, each beside a Laplacian baseline.

Two sources, from the held-out patients' sharp photos with a cervix box:

* ``atlas``: sharp controls (the photo as it is, and ``controls`` copies through ``holdout_blur.finish``) and
  ``draws`` blurred draws (two of each family for 10), each through ``finish``;
* ``device-like``: each photo framed twice as a smartphone sees it (``gateway.training.device_photos``), each
  framing captured once sharp and once per blurred family (the blur before the phone's sharpening).

Every image goes through the gateway's own judge as bytes (decode, detector, focus, exposure, policy), so the
verdict counted is the one the device sees. The baseline is the variance of the Laplacian of the grey whole frame
at a long side of 800 px (log1p), "not sharp" below a threshold of best accuracy fitted, per source, on the
*training* patients' sharp photos and their copies degraded by the *training* degradation model
(``gateway.training.degradations``): the independent generator never chooses a threshold.

Per source and row: the model's recall (``out_of_focus`` in the verdict) and the baseline's recall at the same
specificity (its threshold set to keep as many sharp controls as the model keeps), the baseline at its fitted
threshold, the verdict counts (``recapture``; ``accept`` with ``borderline_focus``, which lets the photo through;
plain ``accept``), and the blur type (``motion_blur`` / ``defocus`` in the verdict) against the draw's label; all
with Wilson 95 % intervals, and ROC AUC per source.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import cv2
import numpy as np

from gateway.evaluation import holdout_blur as hb
from gateway.judge import Judge, PhotoRequest
from gateway.protocol import Reason
from gateway.training import degradations, device_photos
from gateway.training.dataset import Photo, box_pixels
from gateway.training.evaluate import mark, roc_auc, wilson

SOURCES = ("atlas", "device-like")
LONG_SIDE = 800
FRAMINGS = 2
"""Device-like framings per photo (each captured sharp once and once per blurred family)."""
TYPES = ("motion_blur", "defocus")
TYPE_OF = {"motion": "motion_blur", "defocus": "defocus"}
FIT_KINDS: tuple[degradations.Kind, ...] = ("sharp", "defocus", "sharp", "motion", "sharp", "cervix_blur")
FIT_DEVICE_PHOTOS = 40
"""The device-like fit frames at most this many training photos (evenly spread): each is slow to compose."""
Progress = Callable[[int, int], object]


@dataclass(frozen=True)
class Judgement:
    """One image, its label and what the gateway and the baseline said."""

    source: str
    family: str
    """A ``holdout_blur`` family, or ``sharp`` for a control."""
    photo: str
    blur_type: str | None
    fraction: float
    """Blur extent / cervix width."""
    verdict: str
    reasons: tuple[str, ...]
    sharp_probability: float
    """nan when the verdict is ``error``."""
    laplacian: float

    @property
    def blurred(self) -> bool:
        return self.family != "sharp"

    @property
    def out_of_focus(self) -> bool:
        return Reason.OUT_OF_FOCUS.value in self.reasons

    @property
    def typed(self) -> str | None:
        found = [t for t in TYPES if t in self.reasons]
        return found[0] if len(found) == 1 else ("both" if found else None)


def whole_frame_laplacian(image: np.ndarray) -> float:
    """log(1 + variance of the Laplacian) of the grey whole frame at a long side of 800 px."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    h, w = grey.shape[:2]
    scale = LONG_SIDE / max(h, w)
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return math.log1p(float(cv2.Laplacian(grey, cv2.CV_64F).var()))


def best_accuracy_threshold(sharp: Sequence[float], blurred: Sequence[float]) -> float:
    """The threshold (not sharp below it) with the most correct of ``sharp`` + ``blurred`` scores."""
    s, b = np.sort(np.asarray(sharp, np.float64)), np.sort(np.asarray(blurred, np.float64))
    values = np.unique(np.concatenate([s, b]))
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    correct = np.searchsorted(b, cuts, side="left") + (len(s) - np.searchsorted(s, cuts, side="left"))
    return float(cuts[int(np.argmax(correct))])


def recall_at_specificity(sharp: Sequence[float], blurred: Sequence[float], specificity: float) -> float:
    """Recall of "not sharp below t" at the highest t that keeps at least ``specificity`` of ``sharp``."""
    if not len(sharp) or not len(blurred):
        return math.nan
    s = np.sort(np.asarray(sharp, np.float64))
    allowed = math.floor((1.0 - specificity) * len(s) + 1e-9)  # sharp scores that may fall below t
    t = s[allowed] if allowed < len(s) else math.inf
    return float(np.mean(np.asarray(blurred, np.float64) < t))


# ------------------------------------------------------------------------------------------ the runs


def _photo_box(p: Photo) -> tuple[float, float, float, float]:
    assert p.box is not None
    return box_pixels(p.box, p.image)


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(data.tobytes())


def _device_training_copies(p: Photo, seed: int, index: int) -> Iterable[tuple[bool, np.ndarray]]:
    """(blurred, image): a training patient's photo framed once, captured with the training blurs and sharp."""
    rng = np.random.default_rng([seed, 4200, index])
    frame = device_photos.compose(p.image, _photo_box(p), rng, p.group)
    for kind in FIT_KINDS:
        d = degradations.sample(kind, rng)
        if kind == "sharp":
            yield False, device_photos.capture(frame, rng).image
        else:
            blur = partial(degradations.blur, d=d)
            yield True, device_photos.capture(frame, rng, blur, speculum_sharp=kind == "cervix_blur").image


def fit_baseline(train: list[Photo], source: str, seed: int, progress: Progress | None = None) -> float:
    """The whole-frame Laplacian threshold of best accuracy on ``train`` photos (sharp, as they are) and their
    copies degraded by the training degradation model (atlas) or framed and captured (device-like)."""
    sharp: list[float] = []
    blurred: list[float] = []
    photos = [p for p in train if p.focus == "sharp" and p.box is not None]
    if source != "atlas" and len(photos) > FIT_DEVICE_PHOTOS:
        photos = [photos[round(k * len(photos) / FIT_DEVICE_PHOTOS)] for k in range(FIT_DEVICE_PHOTOS)]
    for i, p in enumerate(photos):
        if source == "atlas":
            sharp.append(whole_frame_laplacian(p.image))
            for v, kind in enumerate(FIT_KINDS):
                rng = np.random.default_rng([seed, 4100, i, v])
                image = degradations.degrade(p.image, _photo_box(p), degradations.sample(kind, rng), rng)
                (sharp if kind == "sharp" else blurred).append(whole_frame_laplacian(image))
        else:
            for is_blurred, image in _device_training_copies(p, seed, i):
                (blurred if is_blurred else sharp).append(whole_frame_laplacian(image))
        if progress:
            progress(i, len(photos))
    if not sharp or not blurred:
        return math.nan
    return best_accuracy_threshold(sharp, blurred)


@dataclass(frozen=True)
class _Image:
    family: str
    label: hb.BlurLabel | None
    payload: bytes
    pixels: np.ndarray


def _atlas_images(p: Photo, seed: int, draws: int, controls: int) -> Iterable[_Image]:
    image, box = p.image, _photo_box(p)
    yield _Image("sharp", None, _png(image), image)
    for c in range(controls):
        d = hb.degrade(image, box, "sharp", hb.stream(seed, f"control|{p.name}", c))
        yield _Image("sharp", d.label, _png(d.image), d.image)
    for d in hb.draws(image, box, seed, p.name, count=draws):
        yield _Image(d.label.family, d.label, _png(d.image), d.image)


def _device_images(p: Photo, seed: int, draws: int) -> Iterable[_Image]:
    families = [hb.BLURRED[i % len(hb.BLURRED)] for i in range(draws)]
    for f in range(FRAMINGS):
        rng = hb.stream(seed, f"device|{p.name}", f)
        frame = device_photos.compose(p.image, _photo_box(p), rng, p.group)
        photo = device_photos.capture(frame, rng)
        yield _Image("sharp", None, photo.jpeg, photo.image)
        for family in families[f::FRAMINGS]:
            label = hb.sample(family, frame.cervix_width_px, rng)
            photo = device_photos.capture(frame, rng, partial(hb.blur, label=label))
            yield _Image(family, label, photo.jpeg, photo.image)


def _text(value: object) -> str:
    """An enum member's value (the verdict model keeps values, not members)."""
    return str(getattr(value, "value", value))


def _judge(judge: Judge, source: str, p: Photo, item: _Image, n: int) -> Judgement:
    request = PhotoRequest(
        site="evaluate", device="holdout", image_id=f"holdout-{n}", payload=item.payload, in_run=False
    )
    verdict = judge.judge(request).verdict
    label = item.label
    blurred = label is not None and label.blurred
    return Judgement(
        source=source,
        family=item.family,
        photo=p.name,
        blur_type=label.blur_type if label is not None and blurred else None,
        fraction=label.fraction if label is not None else 0.0,
        verdict=_text(verdict.verdict),
        reasons=tuple(_text(r) for r in verdict.reasons),
        sharp_probability=verdict.focus.sharp_probability if verdict.focus is not None else math.nan,
        laplacian=whole_frame_laplacian(item.pixels),
    )


def measure(
    held: list[Photo],
    train: list[Photo],
    judge: Judge,
    seed: int,
    sources: Sequence[str] = SOURCES,
    draws: int = 10,
    controls: int = 2,
    progress: Progress | None = None,
) -> HoldoutReport:
    """Judge the independent generator's images of ``held`` (sharp photos with a box) and fit the baseline on
    ``train``; ``progress(done, total)`` is called per photo."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
    photos = [p for p in held if p.focus == "sharp" and p.box is not None]
    report = HoldoutReport(draws=draws, photos=len(photos), fitted_on=sorted({p.case for p in train}))
    total = len(photos) * len(sources)
    done = 0
    for source in sources:
        report.thresholds[source] = fit_baseline(train, source, seed)
        for p in photos:
            images = _atlas_images(p, seed, draws, controls) if source == "atlas" else _device_images(p, seed, draws)
            for item in images:
                report.items.append(_judge(judge, source, p, item, len(report.items)))
            done += 1
            if progress:
                progress(done, total)
    return report


# ------------------------------------------------------------------------------------------ the report


def _sharp_score(i: Judgement) -> float:
    """The sharp probability; an ``error`` verdict (no probability) counts as not sharp (0)."""
    return i.sharp_probability if math.isfinite(i.sharp_probability) else 0.0


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": k / n if n else math.nan, "ci": wilson(k, n)}


@dataclass
class HoldoutReport:
    draws: int = 0
    photos: int = 0
    fitted_on: list[str] = field(default_factory=list)
    """The patients the baseline's thresholds were fitted on."""
    thresholds: dict[str, float] = field(default_factory=dict)
    items: list[Judgement] = field(default_factory=list)

    def typed_verdicts(self) -> bool:
        """Whether the verdict can carry a blur type (the contract has the reasons, or a verdict carried one)."""
        known = {r.value for r in Reason}
        return set(TYPES) <= known or any(i.typed for i in self.items)

    def summary(self, source: str) -> dict[str, Any]:
        items = [i for i in self.items if i.source == source]
        sharp = [i for i in items if not i.blurred]
        blurred = [i for i in items if i.blurred]
        t = self.thresholds.get(source, math.nan)
        spec = sum(not i.out_of_focus for i in sharp) / len(sharp) if sharp else math.nan
        sharp_lap = [i.laplacian for i in sharp]
        sharp_p = [_sharp_score(i) for i in sharp]
        spec_lap = sum(i.laplacian >= t for i in sharp) / len(sharp) if sharp else math.nan
        rows: dict[str, dict[str, Any]] = {}
        groups = [("sharp", sharp)] + [(f, [i for i in blurred if i.family == f]) for f in hb.BLURRED]
        groups.append(("all blurred", blurred))
        for name, group in groups:
            if not group:
                continue
            n = len(group)
            positive = name != "sharp"
            row: dict[str, Any] = {
                "n": n,
                "measures": "recall (found not sharp)" if positive else "specificity (kept sharp)",
                "model": _rate(sum(i.out_of_focus == positive for i in group), n),
                "laplacian_fitted": _rate(sum((i.laplacian < t) == positive for i in group), n),
                "recapture": _rate(sum(i.verdict == "recapture" for i in group), n),
                "accept_borderline": _rate(
                    sum(i.verdict == "accept" and Reason.BORDERLINE_FOCUS.value in i.reasons for i in group), n
                ),
                "accept": _rate(
                    sum(i.verdict == "accept" and Reason.BORDERLINE_FOCUS.value not in i.reasons for i in group), n
                ),
                "error": _rate(sum(i.verdict == "error" for i in group), n),
            }
            if positive:
                at = recall_at_specificity(sharp_lap, [i.laplacian for i in group], spec)
                row["laplacian_at_model_specificity"] = {"rate": at, "ci": wilson(round(at * n), n)}
                mt = recall_at_specificity(sharp_p, [_sharp_score(i) for i in group], spec_lap)
                row["model_at_laplacian_specificity"] = {"rate": mt, "ci": wilson(round(mt * n), n)}
                if self.typed_verdicts():
                    right = sum(i.typed == TYPE_OF.get(i.blur_type or "") for i in group)
                    row["blur_type_right"] = _rate(right, n)
                    row["blur_type_right_of_typed"] = _rate(right, sum(i.typed is not None for i in group))
                extent = [i.fraction for i in group]
                row["extent_fraction"] = [min(extent), max(extent)]
            rows[name] = row
        truth = [i.blurred for i in items]
        return {
            "photos": len({i.photo for i in items}),
            "laplacian_threshold": t,
            "model_specificity": spec,
            "laplacian_specificity": spec_lap,
            "roc_auc": {
                "model": roc_auc(truth, [1.0 - _sharp_score(i) for i in items]),
                "laplacian": roc_auc(truth, [-i.laplacian for i in items]),
            },
            "rows": rows,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "draws_per_photo": self.draws,
            "photos": self.photos,
            "baseline_fitted_on": self.fitted_on,
            "sources": {s: self.summary(s) for s in SOURCES if any(i.source == s for i in self.items)},
            "items": [asdict(i) for i in self.items],
        }

    def targets(self) -> list[str]:
        """Target rows of the issue that these rows answer (for the evaluate report's target table)."""
        lines = []
        for source in SOURCES:
            if not any(i.source == source for i in self.items):
                continue
            rows = self.summary(source)["rows"]
            below = [
                name
                for name, r in rows.items()
                if name not in ("sharp", "all blurred")
                and r["model"]["rate"] < r["laplacian_at_model_specificity"]["rate"]
            ]
            lines.append(
                f"| independent blur, {source}: recall >= Laplacian at equal specificity, every family | "
                f"below in: {', '.join(below) or 'none'} | {mark(not below)} |"
            )
            recaptured = rows["all blurred"]["recapture"]["rate"]
            lines.append(
                f"| independent blur, {source}: blurred photos recaptured >= 98 % | {100 * recaptured:.1f} % | "
                f"{mark(recaptured >= 0.98)} |"
            )
            kind = rows["all blurred"].get("blur_type_right")
            reached = f"{100 * kind['rate']:.1f} %" if kind else "n/a"
            met = mark(bool(kind) and kind["rate"] >= 0.9)
            lines.append(f"| independent blur, {source}: blur type right >= 90 % | {reached} | {met} |")
        return lines

    def table(self) -> str:
        def pct(r: dict[str, Any] | None) -> str:
            if r is None or r["rate"] != r["rate"]:
                return "-"
            lo, hi = r["ci"]
            return f"{100 * r['rate']:5.1f}% [{100 * lo:.0f}-{100 * hi:.0f}]"

        lines = [
            "### Independent blur generator (gateway/evaluation/holdout_blur.py)",
            "",
            f"{self.photos} sharp photos of the patients above, {self.draws} blurred draws per photo and source. "
            "Baseline: variance of the Laplacian, grey whole frame at 800 px long side, threshold of best accuracy "
            f"on the training patients' photos and their training-model degraded copies ({len(self.fitted_on)} "
            'patients). Model = `out_of_focus` in the verdict. "Laplacian @ model spec." sets the baseline\'s '
            'threshold to keep as many sharp controls as the model keeps; "model @ Laplacian spec." sets a threshold '
            "on the sharp probability to keep as many as the fitted baseline keeps.",
        ]
        typed = self.typed_verdicts()
        for source in SOURCES:
            if not any(i.source == source for i in self.items):
                continue
            s = self.summary(source)
            lines += [
                "",
                f"#### {source} ({s['photos']} photos; model specificity {100 * s['model_specificity']:.1f} %, "
                f"baseline threshold {s['laplacian_threshold']:.3f}, specificity "
                f"{100 * s['laplacian_specificity']:.1f} %; ROC AUC model {s['roc_auc']['model']:.3f}, "
                f"Laplacian {s['roc_auc']['laplacian']:.3f})",
                "",
                "| row | n | measures | model [95% CI] | Laplacian @ model spec. | Laplacian, fitted [95% CI] "
                "| model @ Laplacian spec. | recapture | accept + borderline | accept | blur type right |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for name, r in s["rows"].items():
                at = r.get("laplacian_at_model_specificity")
                mt = r.get("model_at_laplacian_specificity")
                kind = r.get("blur_type_right")
                kind_text = "n/a" if not typed else (pct(kind) if kind else "")
                lines.append(
                    f"| {name} | {r['n']} | {r['measures']} | {pct(r['model'])} | "
                    f"{pct(at) if at else ''} | {pct(r['laplacian_fitted'])} | {pct(mt) if mt else ''} | "
                    f"{pct(r['recapture'])} | "
                    f"{pct(r['accept_borderline'])} | {pct(r['accept'])} | {kind_text if name != 'sharp' else ''} |"
                )
        if not typed:
            lines += ["", "Blur type: n/a (the verdict carries no `motion_blur` / `defocus` reason)."]
        return "\n".join(lines)
