"""The labelled photos (``labels.csv``), the patient split, images without a cervix, and training samples.

The split is by patient (``case``), never by photo, reproducible from the seed: every patient with a real blurry
photo goes to validation (the real blurry photos are validation only), then a seeded draw of the other patients
fills validation up to ``VAL_FRACTION`` of all patients; the rest train.

Images without a cervix: scikit-image's bundled sample photos (alternately train / validation by name),
``gateway.scenes`` views without a cervix (train seeds from 100000, validation seeds from 200000) and a few
generated images (textures, gradients, text). Nothing here writes images to disk.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from gateway import scenes
from gateway.assessment import Box

VAL_FRACTION = 0.4
TRAIN_SCENE_SEEDS = 100_000
VAL_SCENE_SEEDS = 200_000
SCENE_SIZE = (800, 600)


def stage_group(stage: str) -> str:
    """The examination stage, grouped: saline, acetic, green, lugol or other."""
    s = stage.lower()
    for key, group in (("green", "green"), ("lugol", "lugol"), ("saline", "saline"), ("acetic", "acetic")):
        if key in s:
            return group
    return "other"


@dataclass(frozen=True)
class Photo:
    """One labelled photo; the pixels are read on first use."""

    path: Path
    case: str
    stage: str
    focus: str
    """sharp, blurry or unsure."""
    box: Box | None
    """Normalised cervix box; None when no cervix is visible."""
    overlay: bool

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def image(self) -> np.ndarray:
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read {self.path}")
        return image

    @property
    def group(self) -> str:
        return stage_group(self.stage)


def load_photos(data: Path) -> list[Photo]:
    """The rows of ``data/labels.csv`` (columns file, case, stage, x0..y1, focus, overlay), in file order."""
    labels = data / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"no labels.csv in {data}")
    photos = []
    with labels.open(newline="") as f:
        for row in csv.DictReader(f):
            w, h = float(row.get("width") or 0), float(row.get("height") or 0)
            box: Box | None = None
            if row.get("x0"):
                if not (w and h):
                    image = cv2.imread(str(data / row["file"]), cv2.IMREAD_COLOR)
                    if image is None:
                        raise ValueError(f"cannot read {row['file']}")
                    h, w = (float(v) for v in image.shape[:2])
                box = (float(row["x0"]) / w, float(row["y0"]) / h, float(row["x1"]) / w, float(row["y1"]) / h)
            photos.append(
                Photo(
                    path=data / row["file"],
                    case=row.get("case") or Path(row["file"]).stem,
                    stage=row.get("stage", ""),
                    focus=row.get("focus", "sharp"),
                    box=box,
                    overlay=row.get("overlay", "no") == "yes",
                )
            )
    return photos


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    seed: int

    def describe(self) -> str:
        return (
            f"by patient, seed {self.seed}: {len(self.train)} training patients, {len(self.validation)} validation"
            f" patients ({', '.join(self.validation)}); every patient with a real blurry photo is in validation"
        )


def patient_split(photos: list[Photo], seed: int, val_fraction: float = VAL_FRACTION) -> Split:
    """Split patients (never photos): patients with a blurry photo, plus a seeded draw, validate."""
    cases = sorted({p.case for p in photos})
    blurry = sorted({p.case for p in photos if p.focus == "blurry"})
    rest = [c for c in cases if c not in blurry]
    order = np.random.default_rng(seed).permutation(len(rest))
    extra = max(0, round(val_fraction * len(cases)) - len(blurry))
    validation = sorted(blurry + [rest[i] for i in order[:extra]])
    train = sorted(rest[i] for i in order[extra:])
    return Split(tuple(train), tuple(validation), seed)


def box_pixels(box: Box, image: np.ndarray) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return (box[0] * w, box[1] * h, box[2] * w, box[3] * h)


# ------------------------------------------------------------------------------------------ no-cervix images


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled sample photos (BGR, at least 128 px), by name; empty if it is not installed."""
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in {".png", ".jpg"}:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None and min(image.shape[:2]) >= 128:
            out.append((path.name, image))
    return out


def generated_negatives(seed: int, count: int) -> list[tuple[str, np.ndarray]]:
    """Images that are not photos of a cervix: smooth colour fields, noise, stripes, a text page, a grey card."""
    rng = np.random.default_rng(seed)
    out = []
    w, h = SCENE_SIZE
    for i in range(count):
        kind = i % 5
        if kind == 0:
            small = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
            image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        elif kind == 1:
            image = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), rng.uniform(1, 8))
        elif kind == 2:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            f, a = rng.uniform(0.01, 0.1), rng.uniform(0, np.pi)
            wave = 127 + 100 * np.sin(f * (xx * np.cos(a) + yy * np.sin(a)))
            image = np.stack([wave * rng.uniform(0.3, 1) for _ in range(3)], axis=2)
        elif kind == 3:
            image = np.full((h, w, 3), int(rng.uniform(180, 250)), np.uint8)
            for y in range(40, h, 34):
                cv2.putText(
                    image, "Lorem ipsum dolor sit amet", (30, y), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (30, 30, 30), 2
                )
        else:
            image = np.full((h, w, 3), rng.uniform(20, 200, 3), np.float32)
        out.append((f"generated-{seed}-{i}", np.clip(image, 0, 255).astype(np.uint8)))
    return out


def scene(
    seed: int, cervix: bool, stage_index: int = 0, blur: scenes.Blur = "none", blur_px: float = 0.0
) -> scenes.Scene:
    stages: tuple[scenes.Stage, ...] = ("saline", "acetic", "iodine", "green")
    w, h = SCENE_SIZE
    spec = scenes.SceneSpec(
        width=w, height=h, seed=seed, cervix=cervix, stage=stages[stage_index % 4], blur=blur, blur_px=blur_px
    )
    return scenes.render(spec)


def negatives(validation: bool, count: int = 24) -> list[tuple[str, np.ndarray]]:
    """No-cervix images for training (``validation=False``) or validation: disjoint sets."""
    photos = [item for i, item in enumerate(sample_photos()) if i % 2 == int(validation)]
    base = VAL_SCENE_SEEDS if validation else TRAIN_SCENE_SEEDS
    views = [(f"scene-{base + i}", scene(base + i, cervix=False).image) for i in range(count)]
    return photos + views + generated_negatives(base, count // 2)
