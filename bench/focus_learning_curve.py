"""How the focus head's separation of real photos grows with the number of training patients: the learning curve
in the model card ("Intended use and limitations").

Per training seed:

* the focus training draws of the shipped recipe (``train.cached_focus_features``: 24 draws per sharp photo of the
  training patients, 30 synthetic scenes, 6 device-like draws per photo), cached under ``--cache``;
* the inputs that ``colpo-gateway evaluate`` feeds the focus model on that seed's validation patients (the crop's
  backbone features and the classical measures), recorded from an ``evaluate`` run of ``--manifest``. The crops
  depend on the detector only, so the shipped manifest serves every seed;
* the shipped recipe's head (``train.train_focus_head``) retrained on random subsets of the training patients (a
  quarter, a half and three quarters of them, three subsets each) and on all of them, synthetic scenes always kept.

Per size it prints the real-photo ROC AUC (the real blurry photos against the seed's real sharp ones), the real
blurry photos found while losing at most 2 real sharp ones (a threshold set on the validation photos themselves: an
analysis figure, never an operating point), and the independent generator's ROC AUC (blurred against sharp draws)
per source; then the mean over seeds.

Needs the ``train`` extra (torch) and the dev photos; about 25 minutes a seed on 2 CPU cores, most of it the draws
and the evaluate run, both cached.
Usage: ``python bench/focus_learning_curve.py [--data DIR] [--manifest FILE] [--seeds 0,1,2,3,4] [--cache DIR]
[--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.backends.base import Backend  # noqa: E402
from gateway.models.manifest import load_manifest  # noqa: E402
from gateway.progress import BuildProgress  # noqa: E402
from gateway.training import dataset, evaluate, model, train  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SUBSETS = 3
"""Random subsets of the training patients per fraction below 1."""
LOST = 2
"""Real sharp photos a found-count may lose (the focus targets' budget)."""


@contextmanager
def recording(extractor: Any, manifest: Path) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """While open, every focus-model call of ``evaluate`` appends (backbone features of its crop, its measures)."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    focus = next(m for m in load_manifest(manifest).models if m.task == "focus_classifier")
    if focus.measures is None:
        raise SystemExit(f"{manifest}: its focus model takes no classical measures; this curve is of the fused head")
    crops, measures = focus.input.name, focus.measures.name

    class Recorder:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def run(self, feeds: dict[str, np.ndarray]) -> Any:
            for k in range(len(feeds[crops])):
                features = extractor([np.asarray(feeds[crops][k : k + 1], np.float32)])[0][0]
                calls.append((features, np.asarray(feeds[measures][k], np.float32)))
            return self.inner.run(feeds)

    opened = evaluate.onnx_backend

    def backend(manifest_path: Path, threads: int = 2) -> Backend:
        b = opened(manifest_path, threads)
        judge: Any = b.focus  # the neural focus judge, whose runtime runs the model
        judge.runtime = Recorder(judge.runtime)
        return b

    evaluate.onnx_backend = backend  # evaluate opens its backend through this module attribute
    try:
        yield calls
    finally:
        evaluate.onnx_backend = opened


def validation_inputs(data: Path, manifest: Path, seed: int, extractor: Any, path: Path) -> dict[str, Any]:
    """The focus model's inputs on ``evaluate``'s run for ``seed``, with each call's row and source."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    with recording(extractor, manifest) as calls:
        report = evaluate.evaluate(data, manifest, seed=seed, progress=BuildProgress("evaluate", interval_s=120.0))
    photos = dataset.load_photos(data)
    split = dataset.patient_split(photos, seed)
    rows = [row for _, row in evaluate.focus_jobs([p for p in photos if p.case in split.validation])]
    items = report.holdout.items if report.holdout is not None else []
    sources = [""] * len(rows) + [item.source for item in items]
    rows += ["sharp" if item.family == "sharp" else "blurred" for item in items]
    if len(rows) != len(calls):
        raise SystemExit(f"seed {seed}: {len(calls)} focus calls for {len(rows)} evaluate jobs; the job order changed")
    x = np.concatenate([np.stack([f for f, _ in calls]), np.stack([m for _, m in calls])], axis=1)
    np.savez(path, x=x, row=np.array(rows), source=np.array(sources))
    return {"x": x, "row": np.array(rows), "source": np.array(sources)}


def auc(positive: np.ndarray, score: np.ndarray) -> float:
    return evaluate.roc_auc(positive.tolist(), score.tolist())


def curve(seed: int, draws: train.FocusSet, val: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per head: the fraction, patients, and the figures of the module docstring."""
    groups = draws.groups.tolist()
    patients = sorted({g for g in groups if not g.startswith("scene-")})
    real = np.isin(val["row"], ["real sharp", "real blurry"])
    blurry = val["row"][real] == "real blurry"
    rng = np.random.default_rng(1000 + seed)
    results = []
    for fraction in FRACTIONS:
        for _ in range(1 if fraction == 1.0 else SUBSETS):
            keep = set(patients)
            if fraction < 1.0:
                keep = set(rng.choice(patients, max(2, round(fraction * len(patients))), replace=False).tolist())
            rows = np.array([g.startswith("scene-") or g in keep for g in groups])
            options = train.TrainOptions(data=Path("."), out=Path("."), seed=seed)
            head = train.train_focus_head(
                draws.x[rows], draws.y[rows], options, draws.x.shape[1] - model.FOCUS_FEATURES
            )
            sharp = train.sharp_probability(head, val["x"].astype(np.float32))
            s = sharp[real]
            cut = np.sort(s[~blurry])[LOST]  # below it: at most LOST real sharp photos lost
            result = {
                "seed": seed,
                "fraction": fraction,
                "patients": len(keep),
                "real_auc": auc(blurry, 1 - s),
                "real_blurry_found": int(np.sum(s[blurry] < cut)),
                "real_blurry": int(blurry.sum()),
            }
            for source in ("atlas", "device-like"):
                held = val["source"] == source
                result[f"independent_auc_{source}"] = auc(val["row"][held] == "blurred", 1 - sharp[held])
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cervix-dev")
    parser.add_argument("--manifest", type=Path, default=ROOT / "engines" / "manifest.yaml")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "focus-learning-curve")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    photos = dataset.load_photos(args.data)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        extractor = train._Extractor(
            model.FocusFeatures(train.FOCUS_SIZE), train.focus_input(), ["features"], Path(tmp)
        )
        for seed in (int(s) for s in args.seeds.split(",")):
            split = dataset.patient_split(photos, seed)
            options = train.TrainOptions(
                data=args.data, out=Path(tmp), seed=seed, focus_cache=args.cache / f"draws-seed{seed}.npz"
            )
            training = [p for p in photos if p.case in split.train]
            draws = train.cached_focus_features(options, training, extractor, BuildProgress("draws", interval_s=120.0))
            val = validation_inputs(
                args.data, args.manifest, seed, extractor, args.cache / f"validation-seed{seed}.npz"
            )
            results += curve(seed, draws, val)
    print(
        "\n| training patients | real ROC AUC, mean over seeds (sd) | real blurry found, <= 2 real sharp lost "
        "| independent ROC AUC, atlas / device-like |\n|---|---|---|---|"
    )
    for fraction in FRACTIONS:
        per_seed: dict[int, list[dict[str, Any]]] = {}
        for r in results:
            if r["fraction"] == fraction:
                per_seed.setdefault(r["seed"], []).append(r)

        def mean(key: str, rows: dict[int, list[dict[str, Any]]] = per_seed) -> list[float]:
            return [statistics.fmean(r[key] for r in group) for group in rows.values()]

        aucs = mean("real_auc")
        sd = f"{statistics.stdev(aucs):.3f}" if len(aucs) > 1 else "-"
        patients = "/".join(sorted({str(r["patients"]) for g in per_seed.values() for r in g}))
        print(
            f"| {patients} | {statistics.fmean(aucs):.3f} ({sd}) | {statistics.fmean(mean('real_blurry_found')):.1f} "
            f"| {statistics.fmean(mean('independent_auc_atlas')):.3f} / "
            f"{statistics.fmean(mean('independent_auc_device-like')):.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
