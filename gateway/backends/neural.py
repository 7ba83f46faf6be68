"""The learned backend: the manifest's models on a runtime (ONNX Runtime or TensorRT), decoded by ``gateway.models``.

Whatever the manifest lacks falls back to the classical assessor: no ``cervix_detector`` -> the classical
detector; no focus model -> the classical focus measure. The backend's ``models`` names every part used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from gateway import __version__
from gateway.assessment import Box, CervixFinding, FocusFinding
from gateway.backends.base import Backend, Detector, FocusJudge
from gateway.backends.classical import ClassicalConfig, ClassicalDetector, ClassicalFocus
from gateway.focus_measures import features
from gateway.models.heads import blur_type_of, cervix_finding, classifier_focus, motion_probability, retinanet_focus
from gateway.models.manifest import Manifest, ModelSpec, check_signature
from gateway.models.preprocess import crop, preprocess
from gateway.models.retinanet import generate_anchors, postprocess
from gateway.runtimes.runtime import InferenceError, Runtime, shapes


class RetinaNetDetector:
    """``cervix_detector``: the best cervix box."""

    def __init__(self, spec: ModelSpec, runtime: Runtime) -> None:
        assert spec.anchors is not None
        self.spec, self.runtime, self._anchor_spec = spec, runtime, spec.anchors
        self._cls = spec.output("cls_logits").name
        self._reg = spec.output("bbox_regression").name

    def locate(self, image: np.ndarray) -> CervixFinding:
        spec = self.spec
        tensor, geometry = preprocess(image, spec.input)
        out = self.runtime.run({spec.input.name: tensor})
        size = (spec.input.height, spec.input.width)
        anchors = generate_anchors(self._anchor_spec, *size)
        try:
            detections = postprocess(
                out[self._cls][0], out[self._reg][0], anchors, self._anchor_spec, spec.decode, size
            )
        except ValueError as exc:
            raise InferenceError(f"{spec.name}: {exc}") from exc
        return cervix_finding(detections, geometry, spec.labels, spec.threshold)


class RetinaNetFocus:
    """``focus_retinanet`` on the whole photo: the highest-scoring box decides."""

    def __init__(self, spec: ModelSpec, runtime: Runtime) -> None:
        assert spec.anchors is not None
        self.spec, self.runtime = spec, runtime
        self._cls = spec.output("cls_logits").name
        self._anchors = spec.anchors.count(spec.input.height, spec.input.width)

    def judge(self, image: np.ndarray, box: Box | None) -> FocusFinding:
        tensor, _ = preprocess(image, self.spec.input)
        logits = self.runtime.run({self.spec.input.name: tensor})[self._cls][0]
        if logits.shape[0] != self._anchors:
            raise InferenceError(
                f"{self.spec.name}: the model gave {logits.shape[0]} anchors, the manifest's anchors give"
                f" {self._anchors}"
            )
        return retinanet_focus(logits, self.spec.labels, self.spec.threshold, self.spec.recapture_threshold)


class ClassifierFocus:
    """``focus_classifier`` on the cervix crop (the whole photo when no cervix was found), with the classical
    measures of the same cervix as a second input when the manifest names a feature set. A model with a
    ``blur_type_logits`` output gives the blur type of every photo (the policy reads it only when it calls a
    photo out of focus); without one it stays None and the pipeline measures it classically."""

    def __init__(self, spec: ModelSpec, runtime: Runtime) -> None:
        self.spec, self.runtime = spec, runtime
        self._logits = spec.output("logits").name
        blur = spec.blur_type_output
        self._blur = None if blur is None else blur.name

    def judge(self, image: np.ndarray, box: Box | None) -> FocusFinding:
        tensor, _ = preprocess(crop(image, box, self.spec.crop_margin), self.spec.input)
        feeds = {self.spec.input.name: tensor}
        if (measures := self.spec.measures) is not None:  # a fused model: the classical measures, same photo
            feeds[measures.name] = features(measures.set, image, box)[None]
        out = self.runtime.run(feeds)
        spec = self.spec
        found = classifier_focus(out[self._logits][0], spec.labels, spec.threshold, spec.recapture_threshold)
        if self._blur is None:
            return found
        kind = blur_type_of(motion_probability(out[self._blur][0]), spec.motion_cut)
        return dataclasses.replace(found, blur_type=kind)


RuntimeFactory = Callable[[ModelSpec], Runtime]
"""Opens the runtime of one model (ONNX Runtime on its ONNX file, or TensorRT on its plan)."""


def open_runtimes(manifest: Manifest, factory: RuntimeFactory) -> dict[str, Runtime]:
    """One runtime per model, each checked against its spec; raises ManifestError or InferenceError."""
    runtimes: dict[str, Runtime] = {}
    try:
        for spec in manifest.models:
            runtime = factory(spec)
            runtimes[spec.name] = runtime
            check_signature(spec, shapes(runtime.inputs), shapes(runtime.outputs))
    except Exception:
        for runtime in runtimes.values():
            runtime.close()
        raise
    return runtimes


def neural_backend(
    engine: str, manifest: Manifest, runtimes: Mapping[str, Runtime], classical: ClassicalConfig
) -> Backend:
    """The backend for ``engine`` (``onnxruntime``/``tensorrt``) from opened runtimes, classical where none."""
    models: dict[str, str] = {}
    detector: Detector
    focus: FocusJudge
    if spec := manifest.for_task("cervix_detector"):
        detector = RetinaNetDetector(spec, runtimes[spec.name])
        models[spec.name] = spec.version
    else:
        detector = ClassicalDetector(classical)
        models["classical"] = __version__
    if spec := manifest.for_task("focus_retinanet"):
        focus = RetinaNetFocus(spec, runtimes[spec.name])
        models[spec.name] = spec.version
    elif spec := manifest.for_task("focus_classifier"):
        focus = ClassifierFocus(spec, runtimes[spec.name])
        models[spec.name] = spec.version
    else:
        focus = ClassicalFocus(classical)
        models["classical"] = __version__
    return Backend(name=engine, models=models, detector=detector, focus=focus, runtimes=tuple(runtimes.values()))
