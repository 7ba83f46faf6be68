"""The seed spread of ``colpo-gateway evaluate``: the headline figures of one report per training seed, side by
side with their range, and the issue's targets that must hold with each seed.

A training seed gives both the models (``colpo-gateway train --seed N``) and the patient split, so each seed's
report is its own manifest judged on its own validation patients. Every figure is read from the report's own
fields (``Report.overall``, ``per_row``, ``sensitivity_at_specificity``, ``detector``, ``HoldoutReport.summary``),
so it is the number of the seed's main table. The targets "real blurry found >= 7 of 14" and "real sharp lost
<= 2 of 37" are taken as those proportions of each seed's own count (the real sharp validation photos differ
between splits; with 14 and 37 photos they are the literal targets).

The replacement rule (``SeedSpread.pairs``): per seed, six targets (per source of the independent blur, sharp
draws accepted >= 95 % and blurred draws recaptured >= 98 %; real blurry found; real sharp lost). A recipe
replaces the shipped one only when, over seeds 0-4, it meets more of these seed-target pairs (engines/MODEL_CARD.md
lists what was counted this way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from gateway.evaluation.blur_rows import SOURCES, HoldoutReport
from gateway.training.evaluate import Report, mark

BLURRY_FOUND = (7, 14)
"""At least 7 of 14 real blurry photos found, with each seed."""
SHARP_LOST = (2, 37)
"""At most 2 of 37 real sharp photos lost, with each seed."""
SHARP_ACCEPTED = 0.95
"""Independent sharp draws accepted (the borderline band included), per source."""
BLURRED_RECAPTURED = 0.98
"""Independent blurred draws recaptured, per source."""


def _found_enough(k: int, n: int) -> bool:
    """``k`` of ``n`` real blurry photos found meets ``BLURRY_FOUND`` (as a proportion)."""
    need, of = BLURRY_FOUND
    return n > 0 and k * of >= need * n


def _lost_few_enough(k: int, n: int) -> bool:
    """``k`` of ``n`` real sharp photos lost meets ``SHARP_LOST`` (as a proportion)."""
    allowed, of = SHARP_LOST
    return n > 0 and k * of <= allowed * n


@dataclass(frozen=True)
class Figure:
    """One headline figure of one report: a proportion (``k`` of ``n`` when it counts photos) or an AUC."""

    value: float
    k: int | None = None
    n: int | None = None
    auc: bool = False

    @staticmethod
    def count(k: int, n: int) -> Figure:
        return Figure(k / n if n else math.nan, k, n)

    def text(self) -> str:
        if self.k is not None and self.n is not None:
            return f"{self.k}/{self.n}"
        if not math.isfinite(self.value):
            return "-"
        return f"{self.value:.3f}" if self.auc else f"{100 * self.value:.1f} %"

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "k": self.k, "n": self.n}


def headline(report: Report) -> dict[str, Figure]:
    """The report's headline figures, by the name of their row in the spread."""
    model = report.overall()["model"]
    rows = report.per_row()
    blurry, sharp = rows["real blurry"], rows["real sharp"]
    out = {
        "accuracy": Figure(model["accuracy"]),
        "recall at specificity >= 95 %": Figure(report.sensitivity_at_specificity(0.95)),
        "ROC AUC": Figure(model["roc_auc"], auc=True),
        "real blurry found": Figure.count(blurry["model_k"], blurry["n"]),
        "real sharp kept": Figure.count(sharp["model_k"], sharp["n"]),
    }
    if report.holdout is not None:
        out |= _holdout_figures(report.holdout)
    if report.detector:
        out["cervix found (IoU >= 0.5)"] = Figure.count(report.detector["hits"], report.detector["cervix_photos"])
    return out


def _holdout_figures(holdout: HoldoutReport) -> dict[str, Figure]:
    out: dict[str, Figure] = {}
    for source in SOURCES:
        if not any(i.source == source for i in holdout.items):
            continue
        summary = holdout.summary(source)
        blurred, controls = summary["rows"]["all blurred"], summary["rows"]["sharp"]
        kind = blurred.get("blur_type_right")
        accepted = controls["accept"]["k"] + controls["accept_borderline"]["k"]  # the borderline band lets it through
        out |= {
            f"independent blur, {source}: blurred recaptured": Figure.count(
                blurred["recapture"]["k"], blurred["recapture"]["n"]
            ),
            f"independent blur, {source}: sharp accepted": Figure.count(accepted, controls["n"]),
            f"independent blur, {source}: blur type right": (
                Figure.count(kind["k"], kind["n"]) if kind else Figure(math.nan)
            ),
            f"independent blur, {source}: ROC AUC": Figure(summary["roc_auc"]["model"], auc=True),
        }
    return out


def _range(figures: list[Figure]) -> str:
    """min-max over the seeds: of the counts when every seed counts of the same n, else of the values."""
    known = [f for f in figures if math.isfinite(f.value)]
    if not known:
        return "-"
    low, high = min(known, key=lambda f: f.value), max(known, key=lambda f: f.value)
    sizes = {f.n for f in known}
    if known[0].k is not None and len(sizes) == 1:
        return f"{low.k}-{high.k} of {known[0].n}"
    if known[0].auc:
        return f"{low.value:.3f}-{high.value:.3f}"
    return f"{100 * low.value:.1f}-{100 * high.value:.1f} %"


@dataclass
class SeedSpread:
    reports: dict[int, Report]
    """By training seed, the main seed first."""

    @cached_property
    def figures(self) -> dict[str, dict[int, Figure]]:
        """Row name -> seed -> figure; a row missing from a seed's report (say, a source) is nan there."""
        per_seed = {seed: headline(report) for seed, report in self.reports.items()}
        names = list(dict.fromkeys(name for figures in per_seed.values() for name in figures))
        return {name: {seed: per_seed[seed].get(name, Figure(math.nan)) for seed in per_seed} for name in names}

    def _target_counts(self) -> list[tuple[str, str, list[tuple[int, int, int]], bool]]:
        """(target, key, [(seed, k, n)], met) of the two targets that must hold with each seed."""
        figures = self.figures
        found = [(s, f.k or 0, f.n or 0) for s, f in figures["real blurry found"].items()]
        kept = figures["real sharp kept"].items()
        lost = [(s, (f.n or 0) - (f.k or 0), f.n or 0) for s, f in kept]
        (need, of), (allowed, of_sharp) = BLURRY_FOUND, SHARP_LOST
        return [
            (
                f"real blurry found >= {need} of {of} with each seed",
                "real_blurry_found",
                found,
                all(_found_enough(k, n) for _, k, n in found),
            ),
            (
                f"real sharp lost <= {allowed} of {of_sharp} with each seed",
                "real_sharp_lost",
                lost,
                all(_lost_few_enough(k, n) for _, k, n in lost),
            ),
        ]

    def targets(self) -> list[str]:
        lines = ["| target | reached | |", "|---|---|---|"]
        for target, _, counts, met in self._target_counts():
            reached = ", ".join(f"seed {s}: {k} of {n}" for s, k, n in counts)
            lines.append(f"| {target} | {reached} | {mark(met)} |")
        return lines

    def pairs(self) -> dict[int, dict[str, bool]]:
        """Seed -> the replacement rule's targets and whether that seed meets each (a source missing from a
        seed's report is a target not met)."""
        figures = self.figures
        out: dict[int, dict[str, bool]] = {}
        for seed in self.reports:
            met: dict[str, bool] = {}
            for source in SOURCES:
                accepted = figures.get(f"independent blur, {source}: sharp accepted", {}).get(seed)
                recaptured = figures.get(f"independent blur, {source}: blurred recaptured", {}).get(seed)
                met[f"{source} sharp accepted"] = accepted is not None and accepted.value >= SHARP_ACCEPTED
                met[f"{source} blurred recaptured"] = recaptured is not None and recaptured.value >= BLURRED_RECAPTURED
            found, kept = figures["real blurry found"][seed], figures["real sharp kept"][seed]
            met["real blurry found"] = _found_enough(found.k or 0, found.n or 0)
            met["real sharp lost"] = _lost_few_enough((kept.n or 0) - (kept.k or 0), kept.n or 0)
            out[seed] = met
        return out

    def pairs_text(self) -> str:
        pairs = self.pairs()
        per_seed = ", ".join(f"seed {s}: {sum(m.values())} of {len(m)}" for s, m in pairs.items())
        total, of = sum(sum(m.values()) for m in pairs.values()), sum(len(m) for m in pairs.values())
        return f"Seed-target pairs met (the replacement rule): {per_seed}; {total} of {of} in all."

    def table(self) -> str:
        seeds = list(self.reports)
        lines = [
            "### Seed spread",
            "",
            "Each training seed's models on its own patient split (main seed first), same options.",
            "",
            "| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | min-max |",
            "|---|" + "---|" * (len(seeds) + 1),
        ]
        for name, by_seed in self.figures.items():
            cells = " | ".join(f.text() for f in by_seed.values())
            lines.append(f"| {name} | {cells} | {_range(list(by_seed.values()))} |")
        return "\n".join([*lines, "", *self.targets(), "", self.pairs_text()])

    def to_json(self) -> dict[str, Any]:
        return {
            "seeds": list(self.reports),
            "figures": {
                name: {
                    "per_seed": {str(s): f.to_json() for s, f in by_seed.items()},
                    "min": min((f.value for f in by_seed.values() if math.isfinite(f.value)), default=math.nan),
                    "max": max((f.value for f in by_seed.values() if math.isfinite(f.value)), default=math.nan),
                    "min_max": _range(list(by_seed.values())),
                }
                for name, by_seed in self.figures.items()
            },
            "targets": [
                {"target": target, "per_seed": {str(s): {key: k, "n": n} for s, k, n in counts}, "met": met}
                for target, key, counts, met in self._target_counts()
            ],
            "pairs": {str(s): met for s, met in self.pairs().items()},
        }
