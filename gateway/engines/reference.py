"""Reference inputs and their FP32 outputs, shipped beside each model's ONNX file (``<onnx stem>.reference.npz``).

A new TensorRT plan must reproduce them before the gateway uses it: every row's decisive probability (the
detector's best cervix score, the focus models' raw sharp probability) within ``TOLERANCE`` of the FP32 reference,
and no verdict flip (across the model's threshold) where the reference is more than ``TOLERANCE`` from it; for a
focus model with a blur-type output, no blur-type flip (across ``motion_threshold``) where the reference's motion
probability is at least ``BLUR_TYPE_MARGIN`` from it. The rows run one at a time and as full batches, so a plan
that mixes up rows fails too. Every output is stored, by name. The images are synthetic
(``gateway.scenes``), stored as the BGR photos (detector) or cervix crops (focus classifier) the preprocessing
takes. ``colpo-gateway train`` writes them with ONNX Runtime, as ``python -m gateway.engines.reference MANIFEST``
does for a manifest made otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.models.heads import blur_type_of, classifier_focus, motion_probability, retinanet_focus
from gateway.models.manifest import Manifest, ModelSpec, load_manifest, sha256_file
from gateway.models.preprocess import crop, preprocess
from gateway.models.retinanet import sigmoid
from gateway.runtimes.runtime import Runtime

TOLERANCE = 0.02
BLUR_TYPE_MARGIN = 0.1
"""A blur-type flip counts where the FP32 motion probability is at least this far from ``motion_threshold``."""
SUFFIX = ".reference.npz"


@dataclass(frozen=True)
class Reference:
    images: list[np.ndarray]
    """BGR uint8, as the model's preprocessing takes them."""
    outputs: dict[str, np.ndarray]
    """FP32 outputs by name, one row per image."""
    onnx_sha256: str
    measures: np.ndarray | None = None
    """A fused focus model's second input, ``[rows, K]``: the classical measures of the photo each crop came from."""

    def feeds(self, spec: ModelSpec, rows: list[int]) -> dict[str, np.ndarray]:
        """The model's inputs for these rows, as one batch."""
        measures = None if self.measures is None else self.measures[rows]
        return batch(spec, [self.images[r] for r in rows], measures)


def reference_path(manifest: Manifest, spec: ModelSpec) -> Path:
    onnx = manifest.onnx_path(spec)
    return onnx.with_name(onnx.stem + SUFFIX)


def load_reference(manifest: Manifest, spec: ModelSpec) -> Reference | None:
    """The model's reference, or None when none is shipped; raises ValueError when it is for another ONNX file."""
    path = reference_path(manifest, spec)
    if not path.is_file():
        return None
    with np.load(path) as data:
        count = sum(1 for name in data.files if name.startswith("image_"))
        images = [data[f"image_{i}"] for i in range(count)]
        outputs = {name[len("output_") :]: data[name] for name in data.files if name.startswith("output_")}
        sha = str(data["onnx_sha256"])
        measures = data["measures"] if "measures" in data.files else None
    if sha != spec.sha256:
        raise ValueError(f"{path.name} was made from another ONNX file ({sha[:12]}...): run python -m {__name__}")
    return Reference(images, outputs, sha, measures)


def batch(spec: ModelSpec, images: list[np.ndarray], measures: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The images preprocessed as the manifest says (and a fused model's measures, one row each), as one batch."""
    feeds = {spec.input.name: np.concatenate([preprocess(image, spec.input)[0] for image in images])}
    if spec.measures is not None:
        if measures is None:
            raise ValueError(f"{spec.name} takes {spec.measures.name} besides the crop: the reference has none")
        feeds[spec.measures.name] = np.asarray(measures, dtype=np.float32)
    return feeds


def probabilities(spec: ModelSpec, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each row's decisive probability: the best cervix score, or the raw sharp probability."""
    if spec.task == "cervix_detector":
        scores = sigmoid(np.asarray(outputs[spec.output("cls_logits").name], dtype=np.float64))
        return np.asarray(scores[:, :, spec.labels.index("cervix")].max(axis=1))
    if spec.task == "focus_retinanet":
        logits = outputs[spec.output("cls_logits").name]
        return np.array([retinanet_focus(row, spec.labels, spec.threshold).measure for row in logits])
    logits = outputs[spec.output("logits").name]
    return np.array([classifier_focus(row, spec.labels, spec.threshold).measure for row in logits])


def compare_blur_types(spec: ModelSpec, want: np.ndarray, got: np.ndarray, rows: list[int], how: str) -> list[str]:
    """Blur-type flips of ``got`` (blur-type logits of ``rows``) against the reference's ``want`` (all rows)."""
    cut, problems = spec.motion_cut, []
    for index, row in enumerate(rows):
        expected, actual = motion_probability(want[row]), motion_probability(got[index])
        if blur_type_of(actual, cut) != blur_type_of(expected, cut) and abs(expected - cut) >= BLUR_TYPE_MARGIN:
            problems.append(
                f"row {row} ({how}): motion probability {actual:.4f} flips the blur type at {cut} ({expected:.4f})"
            )
    return problems


def compare(spec: ModelSpec, want: np.ndarray, got: np.ndarray, rows: list[int], how: str) -> list[str]:
    """Problems of ``got`` (decisive probabilities of ``rows``) against the reference's ``want`` (all rows)."""
    problems = []
    for index, row in enumerate(rows):
        expected, actual = float(want[row]), float(got[index])
        if abs(actual - expected) > TOLERANCE:
            problems.append(f"row {row} ({how}): {actual:.4f}, reference {expected:.4f} (more than {TOLERANCE} off)")
        elif (actual >= spec.threshold) != (expected >= spec.threshold) and abs(expected - spec.threshold) > TOLERANCE:
            problems.append(f"row {row} ({how}): {actual:.4f} flips the verdict at {spec.threshold} ({expected:.4f})")
    return problems


def check(spec: ModelSpec, reference: Reference, runtime: Runtime, max_batch: int) -> list[str]:
    """Run the reference on ``runtime`` one row at a time and in batches of ``max_batch``; the problems found."""
    blur = spec.blur_type_output
    if blur is not None and blur.name not in reference.outputs:
        return [f"the reference has no output {blur.name!r} (blur_type_logits): write it again ({__name__})"]
    want = probabilities(spec, reference.outputs)
    count = len(reference.images)
    problems = []
    batches = [[row] for row in range(count)]
    batches += [list(range(start, min(count, start + max_batch))) for start in range(0, count, max_batch)]
    for rows in batches:
        how = f"batch {len(rows)}"
        out = runtime.run(reference.feeds(spec, rows))
        problems += compare(spec, want, probabilities(spec, out), rows, how)
        if blur is not None:
            problems += compare_blur_types(spec, reference.outputs[blur.name], out[blur.name], rows, how)
    return problems


def write_reference(
    manifest: Manifest,
    spec: ModelSpec,
    images: list[np.ndarray],
    open_fp32: Callable[[Path], Runtime],
    measures: np.ndarray | None = None,
) -> Path:
    """Run ``images`` (and a fused model's ``measures``) through the ONNX file in FP32 and save all beside it."""
    runtime = open_fp32(manifest.onnx_path(spec))
    try:
        outputs = runtime.run(batch(spec, images, measures))
    finally:
        runtime.close()
    path = reference_path(manifest, spec)
    arrays = {f"image_{i}": image for i, image in enumerate(images)}
    arrays |= {f"output_{name}": np.asarray(value, dtype=np.float32) for name, value in outputs.items()}
    if measures is not None:
        arrays["measures"] = np.asarray(measures, dtype=np.float32)
    sha = sha256_file(manifest.onnx_path(spec))
    np.savez_compressed(path, onnx_sha256=np.array(sha), **arrays)  # type: ignore[arg-type]
    return path


def synthetic_inputs(spec: ModelSpec) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Four scenes unlike each other: sharp, defocused, motion-blurred or without a cervix, and dark; for a fused
    focus model, also the classical measures of each scene's cervix."""
    from gateway.focus_measures import features
    from gateway.scenes import SceneSpec, render

    if spec.task == "focus_classifier":
        specs = [
            SceneSpec(width=800, height=600, seed=5),
            SceneSpec(width=800, height=600, blur="defocus", blur_px=4.0, seed=6),
            SceneSpec(width=800, height=600, blur="motion", blur_px=8.0, seed=7),
            SceneSpec(width=800, height=600, brightness=0.6, seed=8),
        ]
        scenes = [render(s) for s in specs]
        crops = [np.ascontiguousarray(crop(s.image, s.cervix_box, spec.crop_margin)) for s in scenes]
        if spec.measures is None:
            return crops, None
        return crops, np.stack([features(spec.measures.set, s.image, s.cervix_box) for s in scenes])
    specs = [
        SceneSpec(width=400, height=300, seed=1),
        SceneSpec(width=400, height=300, blur="defocus", blur_px=3.0, seed=2),
        SceneSpec(width=400, height=300, cervix=False, seed=3),
        SceneSpec(width=400, height=300, brightness=0.5, seed=4),
    ]
    return [render(s).image for s in specs], None


def write_references(manifest_path: Path) -> list[Path]:
    """The reference of every model of the manifest, from ``synthetic_images`` (``colpo-gateway train`` calls it)."""
    from gateway.runtimes.onnxruntime import OnnxRuntime

    manifest = load_manifest(manifest_path)
    paths = []
    for spec in manifest.models:
        images, measures = synthetic_inputs(spec)
        paths.append(write_reference(manifest, spec, images, OnnxRuntime, measures))
    return paths


def main(argv: list[str]) -> int:
    for path in write_references(Path(argv[0])):
        print(f"{path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
