"""Focus-model variants on the dev photos: what was tried against the committed design, and what real blur shows.

Each variant trains the committed focus head (``gateway.training.train.train_focus_head``) on its own features of
the training patients' sharp photos (24 draws each: rescaled 0.45-1x, flipped, degraded by
``gateway.training.degradations``, cropped at the jittered labelled box), sets its threshold by the committed rule
(keep 97.5 % of a synthetic calibration draw of the validation patients' sharp photos sharp) and is then scored on
the validation patients, at the labelled box:

* real sharp kept, real blurry found (the 14 real blurry photos: never trained on, set no threshold), real blurry
  found at the threshold that loses 2 real sharp photos (the issue's bound), and the ROC AUC of the sharp
  probability on those real photos;
* the synthetic rows of ``colpo-gateway evaluate`` (one draw per sharp photo per row).

Variants:

* ``committed``: the committed design (cervix crop at 384 px, the cervix ~320 px wide; mean and mean |x| of the
  stem and of every stage of the frozen EfficientNet-Lite0; a 2-layer MLP).
* ``no-upscale``: training rescales never enlarge the cervix past the model's scale.
* ``milder-blur``: the blur ranges' mild ends halved (defocus from 0.2 % of the cervix width, about 0.6 px).
* ``masked-marks``: features pooled only away from glints and drawn marks (colour rules on the input).
* ``detector-scale``: focus judged as a RetinaNet with sharp / not-sharp classes would, at the detector's scale (the
  whole photo letterboxed to 320 px, features pooled inside the cervix box).
* ``crop-640``: the crop at 640 px, not 384 (the whole backbone at 640: 2.8 times the pixels of the 384 crop).
* ``crop-640-no-upscale``: both: the crop at 640, training rescales never enlarging the cervix past 533 px.
* ``real-supervised``: no synthetic data at all; a logistic regression on the committed features of the real
  photos, leave-one-patient-out over the validation patients (so the real blurry photos of other patients train
  it). Only real rows.

Needs the ``train`` extra (torch) and the dev photos; about 25 minutes on 2 CPU cores (3.5 a variant and seed).
Nothing is written but ``--json``.
Usage: ``python bench/focus_ablation.py [--data DIR] [--variants a,b] [--seeds 0,1,2] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.models.manifest import InputSpec  # noqa: E402
from gateway.models.preprocess import crop, preprocess  # noqa: E402
from gateway.training import dataset, degradations, evaluate, export, model, train  # noqa: E402
from gateway.training.dataset import Photo, box_pixels  # noqa: E402

DRAWS, CALIBRATION_DRAWS = 24, 12
Sample = tuple[np.ndarray, tuple[float, float, float, float] | None]
"""An input tensor, and the box to pool in (input pixels; None: the whole input)."""


class MaskedFocusFeatures(model.FocusFeatures):
    """The committed features, pooled only where no glint or drawn mark lies within 4 px (colour rules, in-graph).

    Marks: near-white (glints, white text), green/blue/cyan strokes, yellow text; a rule covering over a quarter
    of the crop (a green-filter view) is dropped for that crop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x * model.STD[0] + model.MEAN[0]) * 255.0
        r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
        glint = (torch.minimum(torch.minimum(r, g), b) > 215).float()
        cool = ((g > r + 8) | (b > r + 8)).float()
        yellow = ((r > 140) & (g > 140) & ((r - g).abs() < 45) & (b < 0.55 * g)).float()
        cool = cool * (cool.mean(dim=(2, 3), keepdim=True) < 0.25).float()
        yellow = yellow * (yellow.mean(dim=(2, 3), keepdim=True) < 0.25).float()
        marks = F.max_pool2d(torch.clamp(glint + cool + yellow, 0, 1), 9, stride=1, padding=4)
        means, magnitudes = [], []
        for f in self.backbone(x):
            stride = x.shape[-1] // f.shape[-1]
            valid = 1.0 - (F.max_pool2d(marks, stride, stride=stride) if stride > 1 else marks)
            n = valid.sum(dim=(2, 3)).clamp_min(1.0)
            means.append((f * valid).sum(dim=(2, 3)) / n)
            magnitudes.append((f.abs() * valid).sum(dim=(2, 3)) / n)
        return torch.cat(means + magnitudes, dim=1)


def milder(d: degradations.Degradation, factor: float = 0.5) -> degradations.Degradation:
    """The same draw mapped onto a blur range whose mild end is ``factor`` times the committed one."""
    if not d.not_sharp:
        return d
    lo, hi = degradations.BLUR_RANGES[d.kind]
    t = (math.log(d.blur) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return dataclasses.replace(d, blur=math.exp(math.log(lo * factor) + t * (math.log(hi) - math.log(lo * factor))))


@dataclasses.dataclass(frozen=True)
class Variant:
    upscale: bool = True
    size: int = train.FOCUS_SIZE
    """The focus crop's side (the cervix box is ``size / 1.2`` wide in it)."""
    blur_floor: float = 1.0
    features: str = "committed"
    """committed, masked or detector."""

    def sample(
        self, image: np.ndarray, box: Any, kind: degradations.Kind | None, rng: np.random.Generator, draw: str
    ) -> Sample:
        """``draw``: "train" (rescaled, flipped, box jittered), "calibrate" (flipped, jittered) or "evaluate"."""
        if draw == "train":  # upscale False: never enlarge the cervix past its width in the crop
            width = (box[2] - box[0]) * image.shape[1]
            image = train.rescale(image, train.training_scale(width, rng, not self.upscale, self.size))
        if draw != "evaluate" and rng.random() < 0.5:
            image = image[:, ::-1].copy()
            box = (1.0 - box[2], box[1], 1.0 - box[0], box[3])
        if kind is not None:
            d = degradations.sample(kind, rng)
            d = milder(d, self.blur_floor) if self.blur_floor != 1.0 else d
            image = degradations.degrade(image, box_pixels(box, image), d, rng)
        box = train.jitter_box(box, rng) if draw != "evaluate" else box
        if self.features == "detector":
            tensor, geometry = preprocess(image, train.detector_input())
            sx, sy = geometry.scale_x * geometry.source_w, geometry.scale_y * geometry.source_h
            return tensor, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        tensor, _ = preprocess(crop(image, box, train.CROP_MARGIN), self.spec())
        return tensor, None

    def spec(self) -> InputSpec:
        return train.focus_input().model_copy(update={"shape": (-1, 3, self.size, self.size)})


class Extractor:
    """Sample -> the committed 1632 features, through ONNX Runtime (crops) or torch (box pooling)."""

    def __init__(self, variant: Variant, folder: Path) -> None:
        self.variant = variant
        if variant.features == "detector":
            self.backbone = model.Backbone(model.efficientnet_lite0(train.DETECTOR_SIZE), model.STAGE_ENDS).eval()
            return
        masked = variant.features == "masked"
        module = (MaskedFocusFeatures if masked else model.FocusFeatures)(variant.size)
        spec = variant.spec()
        self.session = export.session(export.export_onnx(module, folder / "features.onnx", spec, ["features"]))
        self.input = spec.name

    def __call__(self, samples: list[Sample]) -> np.ndarray:
        if self.variant.features != "detector":
            out: np.ndarray = self.session.run(None, {self.input: np.concatenate([t for t, _ in samples])})[0]
            return out
        rows = []
        with torch.inference_mode():
            for tensor, box in samples:
                assert box is not None
                maps = self.backbone(torch.from_numpy(tensor))
                means, magnitudes = [], []
                for f in maps:
                    s = train.DETECTOR_SIZE / f.shape[-1]
                    x0, y0 = int(box[0] / s), int(box[1] / s)
                    x1, y1 = max(x0 + 1, math.ceil(box[2] / s)), max(y0 + 1, math.ceil(box[3] / s))
                    region = f[0, :, y0:y1, x0:x1]
                    means.append(region.mean(dim=(1, 2)))
                    magnitudes.append(region.abs().mean(dim=(1, 2)))
                rows.append(torch.cat(means + magnitudes).numpy())
        return np.stack(rows)


def extract(make: Callable[[int], Sample], count: int, extractor: Extractor) -> np.ndarray:
    parts, batch = [], []
    for i in range(count):
        batch.append(make(i))
        if len(batch) == 16 or i == count - 1:
            parts.append(extractor(batch))
            batch = []
    return np.concatenate(parts).astype(np.float32)


def draws(
    photos: list[Photo], variant: Variant, extractor: Extractor, n: int, seed: int, draw: str
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws per sharp photo (kinds cycling as in training), features and labels (1 = sharp)."""
    sources = [p for p in photos if p.focus == "sharp" and p.box is not None]
    kinds = [train.FOCUS_KINDS[v % len(train.FOCUS_KINDS)] for v in range(n)]

    def make(i: int) -> Sample:
        p = sources[i // n]
        return variant.sample(p.image, p.box, kinds[i % n], np.random.default_rng([seed, i]), draw)

    labels = np.array([kinds[i % n] == "sharp" for i in range(len(sources) * n)], np.float32)
    return extract(make, len(sources) * n, extractor), labels


def run_variant(
    name: str, variant: Variant, fit: list[Photo], held: list[Photo], data: Path, seed: int = 0
) -> dict[str, Any]:
    """``seed`` draws the training samples and starts the head (calibration and evaluation draws stay fixed)."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        extractor = Extractor(variant, Path(folder))
        x, y = draws(fit, variant, extractor, DRAWS, seed, "train")
        options = train.TrainOptions(data, Path(folder), seed, focus_variants=DRAWS)
        head = train.train_focus_head(x, y, options)
        cx, cy = draws(held, variant, extractor, CALIBRATION_DRAWS, 1000, "calibrate")
        threshold = train.specificity_threshold(train.sharp_probability(head, cx[cy == 1]), options.focus_specificity)

        def probability(samples: list[Sample]) -> np.ndarray:
            return train.sharp_probability(head, extractor(samples))

        real = [p for p in held if p.box is not None and p.focus in ("sharp", "blurry")]
        p_real = probability([variant.sample(p.image, p.box, None, np.random.default_rng(0), "evaluate") for p in real])
        result = real_rows([p.focus == "blurry" for p in real], p_real, threshold)
        sharp = [p for p in held if p.box is not None and p.focus == "sharp"]
        for k, (row, kind) in enumerate(evaluate.SYNTHETIC.items()):
            rngs = [np.random.default_rng([0, evaluate.EVAL_SEED_OFFSET, k, i]) for i in range(len(sharp))]
            samples = [variant.sample(p.image, p.box, kind, r, "evaluate") for p, r in zip(sharp, rngs, strict=True)]
            p_row = probability(samples)
            hits = int((p_row >= threshold).sum() if kind == "sharp" else (p_row < threshold).sum())
            result[row] = f"{hits}/{len(sharp)}"
    minutes = round((time.monotonic() - t0) / 60, 1)
    label = name if seed == 0 else f"{name} (seed {seed})"
    return {"variant": label, **result, "threshold": round(threshold, 3), "minutes": minutes}


def real_rows(blurry: list[bool], p_sharp: np.ndarray, threshold: float | None) -> dict[str, Any]:
    b = np.array(blurry)
    out: dict[str, Any] = {"real AUC": round(evaluate.roc_auc(list(b), list(-p_sharp)), 3)}
    third = np.sort(p_sharp[~b])[2]  # the threshold that loses 2 real sharp photos
    out["real blurry found losing 2"] = f"{int((p_sharp[b] < third).sum())}/{int(b.sum())}"
    if threshold is not None:
        out["real sharp kept"] = f"{int((p_sharp[~b] >= threshold).sum())}/{int((~b).sum())}"
        out["real blurry found"] = f"{int((p_sharp[b] < threshold).sum())}/{int(b.sum())}"
    return out


def real_supervised(photos: list[Photo], validation: set[str]) -> dict[str, Any]:
    """Leave-one-validation-patient-out logistic regression on the committed features of the real photos."""
    real = [p for p in photos if p.box is not None and p.focus in ("sharp", "blurry")]
    with tempfile.TemporaryDirectory() as folder:
        extractor = Extractor(Variant(), Path(folder))
        x = extract(
            lambda i: Variant().sample(real[i].image, real[i].box, None, np.random.default_rng(0), "evaluate"),
            len(real),
            extractor,
        )
    y = np.array([p.focus == "blurry" for p in real])
    cases = np.array([p.case for p in real])
    score = np.full(len(real), np.nan)
    for case in sorted(validation):
        test = cases == case
        if test.any():
            score[test] = logistic(x[~test], y[~test], x[test])
    held = np.isin(cases, sorted(validation))
    return {"variant": "real-supervised", **real_rows(list(y[held]), -score[held], None)}


def logistic(x: np.ndarray, y: np.ndarray, test: np.ndarray, weight_decay: float = 0.1) -> np.ndarray:
    """L2-regularised, class-balanced logistic regression (LBFGS); the not-sharp logit of ``test``."""
    mu, sd = x.mean(0), x.std(0) + 1e-4
    a, t = torch.tensor((x - mu) / sd), torch.tensor(y, dtype=torch.float32)
    w = torch.zeros(a.shape[1], requires_grad=True)
    c = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, c], max_iter=300)
    balance = torch.tensor(float((1 - y).sum() / max(1, y.sum())))

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ w + c, t, pos_weight=balance) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        out: np.ndarray = (torch.tensor((test - mu) / sd) @ w + c).numpy()
    return out


VARIANTS = {
    "committed": Variant(),
    "no-upscale": Variant(upscale=False),
    "milder-blur": Variant(blur_floor=0.5),
    "masked-marks": Variant(features="masked"),
    "detector-scale": Variant(features="detector"),
    "crop-640": Variant(size=640),
    "crop-640-no-upscale": Variant(upscale=False, size=640),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cervix-dev")
    parser.add_argument("--variants", default=",".join([*VARIANTS, "real-supervised"]))
    parser.add_argument("--seeds", default="0", help="training seeds to run each variant with, e.g. 0,1,2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    photos = dataset.load_photos(args.data)
    split = dataset.patient_split(photos, 0)
    fit = [p for p in photos if p.case in split.train]
    held = [p for p in photos if p.case in split.validation]
    results = []
    for name in args.variants.split(","):
        if name == "real-supervised":
            results.append(real_supervised(photos, set(split.validation)))
        else:
            for seed in (int(s) for s in args.seeds.split(",")):
                results.append(run_variant(name, VARIANTS[name], fit, held, args.data, seed))
                print(json.dumps(results[-1]), flush=True)
            continue
        print(json.dumps(results[-1]), flush=True)
    columns = ["variant", "real sharp kept", "real blurry found", "real blurry found losing 2", "real AUC"]
    columns += list(evaluate.SYNTHETIC)
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
