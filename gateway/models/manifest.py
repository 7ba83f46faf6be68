"""The model manifest (``engines/manifest.yaml``): which models exist, what their tensors are and mean.

The model contract (the trainer must match it; see ``engines/manifest.yaml`` for an annotated example):

* ``cervix_detector`` and ``focus_retinanet`` are RetinaNets. Outputs (roles): ``cls_logits`` ``[N, A, C]``
  (per-anchor class logits, sigmoid) and ``bbox_regression`` ``[N, A, 4]`` (per-anchor ``dx, dy, dw, dh``,
  torchvision's box coding). ``A`` enumerates the anchors of ``anchors`` level by level, each level row-major
  over its feature map (``ceil(H / stride)`` x ``ceil(W / stride)``), each location ratio-major then scale, as
  torchvision's ``AnchorGenerator`` and ``RetinaNetHead`` do. The detector's labels are ``[cervix]``; the focus
  RetinaNet's are ``[sharp, not_sharp]`` (in either order).
* ``focus_classifier`` judges the cervix crop: ``logits`` ``[N, 2]`` (softmax over ``labels``, which holds
  ``sharp``) or ``[N, 1]`` (one sigmoid logit, ``labels: [sharp]``).
* A ``focus_classifier`` may take a second input, ``measures`` ``[N, K]``: a named classical feature set of the
  cervix (``gateway.focus_measures.FEATURE_SETS``), computed in numpy beside the model and fed with the crop, so
  one model fuses learned and classical evidence on ONNX Runtime and TensorRT alike. Entries without it load
  and run as before.
* A ``focus_classifier`` may have a second output, role ``blur_type_logits`` ``[N, 2]``: ``[defocus, motion]``
  logits (softmax). The blur type is ``motion`` when the motion probability reaches ``motion_threshold`` (optional,
  in (0, 1), default 0.5; only with that output), else ``defocus``. Without it the gateway measures the type
  classically (``gateway.focus_measures.blur_type``).
* ``threshold`` is the model's operating point: the detector's minimum cervix score; for focus models the raw
  sharp probability that maps to 0.5 (see ``gateway.models.heads.calibrate``). A focus model may also give
  ``recapture_threshold``, the raw probability that maps to the policy's default recapture point (0.4: 0.5
  minus the default borderline band), so the model sets the width of the borderline band it was measured with.

Loading checks the schema, then each ONNX file's sha256; ``check_signature`` checks the input and output
tensors of a loaded runtime against the spec. Every problem is named in ``ManifestError.problems``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

MANIFEST_SCHEMA = "colposcopy-gateway/models/1"

Task = Literal["cervix_detector", "focus_retinanet", "focus_classifier"]
Role = Literal["cls_logits", "bbox_regression", "logits", "blur_type_logits"]
Shape = tuple[int | None, ...]
"""A tensor shape; ``None`` (``-1`` in the YAML) is a dynamic dimension."""

RETINANET_TASKS: frozenset[str] = frozenset({"cervix_detector", "focus_retinanet"})
FOCUS_TASKS: frozenset[str] = frozenset({"focus_retinanet", "focus_classifier"})
ROLES: dict[str, tuple[Role, ...]] = {
    "cervix_detector": ("cls_logits", "bbox_regression"),
    "focus_retinanet": ("cls_logits", "bbox_regression"),
    "focus_classifier": ("logits",),
}
"""The output roles each task must have."""
OPTIONAL_ROLES: dict[str, tuple[Role, ...]] = {"focus_classifier": ("blur_type_logits",)}
"""The output roles a task may have besides (at most one each)."""
MOTION_THRESHOLD = 0.5
"""The default ``motion_threshold``: the blur type is ``motion`` from this softmax probability of motion up."""
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(Exception):
    """An invalid manifest or model; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _dims(value: Sequence[int]) -> Shape:
    return tuple(None if d == -1 else d for d in value)


class InputSpec(_Strict):
    """The image tensor and how a BGR photo becomes it."""

    name: str
    shape: tuple[int, int, int, int] = Field(description="NCHW; N may be -1 (dynamic batch); C must be 3")
    colour: Literal["rgb", "bgr"] = "rgb"
    scale: float = Field(default=255.0, gt=0, description="pixel values are divided by this before mean/std")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: Literal["letterbox", "stretch"] = Field(
        default="letterbox", description="letterbox: keep the aspect ratio, pad right and bottom; stretch: resize"
    )
    pad_value: float = Field(default=0.0, ge=0, le=255, description="letterbox padding, in pixel units (0..255)")
    dtype: Literal["float32", "float16"] = "float32"

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        n, c, h, w = value
        if n != -1 and n < 1:
            raise ValueError("batch must be -1 (dynamic) or at least 1")
        if c != 3:
            raise ValueError("images have 3 channels: shape is [N, 3, H, W]")
        if h < 16 or w < 16:
            raise ValueError("H and W must be at least 16")
        return value

    @field_validator("std")
    @classmethod
    def _std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("std must be positive")
        return value

    @property
    def height(self) -> int:
        return self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[3]

    @property
    def dims(self) -> Shape:
        return _dims(self.shape)


class OutputSpec(_Strict):
    role: Role
    name: str
    shape: tuple[int, ...] = Field(description="-1 for a dynamic dimension")
    meaning: str

    @property
    def dims(self) -> Shape:
        return _dims(self.shape)


class AnchorSpec(_Strict):
    """RetinaNet anchors, as torchvision's ``AnchorGenerator`` makes them."""

    strides: tuple[int, ...] = Field(min_length=1, description="one per pyramid level, e.g. [8, 16, 32, 64, 128]")
    sizes: tuple[float, ...] = Field(min_length=1, description="base anchor size (pixels) per level")
    aspect_ratios: tuple[float, ...] = Field(default=(0.5, 1.0, 2.0), min_length=1, description="height / width")
    scales: tuple[float, ...] = Field(default=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), min_length=1)
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    box_clip: float = Field(default=math.log(1000.0 / 16), gt=0, description="dw/dh are clamped to this")

    @model_validator(mode="after")
    def _levels(self) -> AnchorSpec:
        if len(self.sizes) != len(self.strides):
            raise ValueError(f"{len(self.strides)} strides but {len(self.sizes)} sizes: one size per level")
        if min(self.strides) < 1 or min(self.sizes) <= 0 or min(self.aspect_ratios) <= 0 or min(self.scales) <= 0:
            raise ValueError("strides, sizes, aspect ratios and scales must be positive")
        return self

    @property
    def per_location(self) -> int:
        return len(self.aspect_ratios) * len(self.scales)

    def grid(self, height: int, width: int) -> list[tuple[int, int]]:
        """Feature-map size of each level for an input of ``height`` x ``width``."""
        return [(-(-height // s), -(-width // s)) for s in self.strides]

    def count(self, height: int, width: int) -> int:
        """Number of anchors (``A``) for an input of ``height`` x ``width``."""
        return sum(h * w for h, w in self.grid(height, width)) * self.per_location


class DecodeSpec(_Strict):
    score_threshold: float = Field(default=0.05, ge=0, lt=1, description="candidates below are dropped")
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    candidates_per_level: int = Field(default=1000, ge=1)
    max_detections: int = Field(default=100, ge=1)


class MeasuresSpec(_Strict):
    """The second input of a fused focus model: classical focus measures of the cervix, computed in numpy."""

    name: str = Field(description="the model's input tensor, [N, count] float32")
    set: str = Field(description="the feature set (gateway.focus_measures.FEATURE_SETS), e.g. focus-v1")
    count: int = Field(ge=1, description="values per photo: the feature set's length")

    @model_validator(mode="after")
    def _known(self) -> MeasuresSpec:
        from gateway.focus_measures import FEATURE_SETS

        if self.set not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {self.set!r}; this gateway knows {sorted(FEATURE_SETS)}")
        names = FEATURE_SETS[self.set][0]
        if self.count != len(names):
            raise ValueError(f"feature set {self.set!r} has {len(names)} values, not {self.count}")
        return self

    @property
    def dims(self) -> Shape:
        return (None, self.count)


class ModelCard(_Strict):
    summary: str
    data: str = Field(description="what it was trained on")
    split: str = Field(description="how train/validation/test were split (by patient, by site...)")
    metrics: dict[str, float] = Field(default_factory=dict, description="on the test split, at the threshold")
    intended_use: str = ""
    limitations: str = ""


class ModelSpec(_Strict):
    name: str
    version: str = Field(min_length=1)
    task: Task
    onnx: Path = Field(description="relative to the manifest's folder")
    sha256: str
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    labels: tuple[str, ...] = Field(min_length=1)
    threshold: float = Field(gt=0, lt=1, description="the default operating threshold")
    recapture_threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="focus models: the raw sharp probability below which a photo is recaptured (mapped to the "
        "policy's default recapture point, 0.4); between it and threshold a photo is borderline",
    )
    anchors: AnchorSpec | None = None
    decode: DecodeSpec = DecodeSpec()
    crop_margin: float = Field(default=0.1, ge=0, le=1, description="focus_classifier: margin around the cervix box")
    measures: MeasuresSpec | None = Field(default=None, description="focus_classifier: a second, classical input")
    motion_threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="focus_classifier with a blur_type_logits output: the motion probability from which the blur "
        f"type is motion (default {MOTION_THRESHOLD})",
    )
    card: ModelCard

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("1..64 characters of [a-z0-9._-], starting with a letter or digit")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not _SHA256.fullmatch(value):
            raise ValueError("64 lowercase hex digits")
        return value

    @model_validator(mode="after")
    def _contract(self) -> ModelSpec:
        roles = sorted(o.role for o in self.outputs)
        required, optional = ROLES[self.task], OPTIONAL_ROLES.get(self.task, ())
        if sorted(r for r in roles if r not in optional) != sorted(required) or len(set(roles)) != len(roles):
            also = f" (and optionally {list(optional)})" if optional else ""
            raise ValueError(f"a {self.task} has outputs with roles {list(required)}{also}; this one has {roles}")
        if len({o.name for o in self.outputs}) != len(self.outputs):
            raise ValueError("output names must be distinct")
        if self.recapture_threshold is not None and (
            self.task not in FOCUS_TASKS or self.recapture_threshold >= self.threshold
        ):
            raise ValueError("recapture_threshold belongs to a focus model and lies below its threshold")
        if self.motion_threshold is not None and self.blur_type_output is None:
            raise ValueError("motion_threshold belongs to a focus_classifier with a blur_type_logits output")
        if self.measures is not None and self.task != "focus_classifier":
            raise ValueError("only a focus_classifier takes measures")
        if self.measures is not None and self.measures.name == self.input.name:
            raise ValueError("measures and the image input need distinct names")
        if self.task in RETINANET_TASKS:
            self._check_retinanet()
        else:
            self._check_classifier()
        return self

    def _check_retinanet(self) -> None:
        if self.anchors is None:
            raise ValueError(f"a {self.task} needs anchors")
        if self.task == "focus_retinanet" and sorted(self.labels) != ["not_sharp", "sharp"]:
            raise ValueError("a focus_retinanet's labels are [sharp, not_sharp]")
        if self.task == "cervix_detector" and "cervix" not in self.labels:
            raise ValueError("a cervix_detector's labels include cervix")
        h, w = self.input.height, self.input.width
        uneven = [s for s in self.anchors.strides if h % s or w % s]
        if uneven:
            raise ValueError(f"input {h}x{w} is not divisible by the strides {uneven}")
        cls, reg = self.output("cls_logits").dims, self.output("bbox_regression").dims
        if len(cls) != 3 or len(reg) != 3:
            raise ValueError("cls_logits and bbox_regression are [N, A, C] and [N, A, 4]")
        if reg[2] != 4:
            raise ValueError("bbox_regression's last dimension is 4 (dx, dy, dw, dh)")
        if cls[2] is not None and cls[2] != len(self.labels):
            raise ValueError(f"cls_logits has {cls[2]} classes but there are {len(self.labels)} labels")
        anchors = self.anchors.count(h, w)
        for name, dims in (("cls_logits", cls), ("bbox_regression", reg)):
            if dims[1] is not None and dims[1] != anchors:
                raise ValueError(f"{name} has {dims[1]} anchors; the anchor spec gives {anchors} for {h}x{w}")

    def _check_classifier(self) -> None:
        if self.anchors is not None:
            raise ValueError("a focus_classifier has no anchors")
        if "sharp" not in self.labels:
            raise ValueError("a focus_classifier's labels include sharp")
        dims = self.output("logits").dims
        if len(dims) != 2 or dims[1] not in (1, 2, None):
            raise ValueError("logits are [N, 2] (softmax) or [N, 1] (sigmoid)")
        if dims[1] is not None and dims[1] != len(self.labels):
            raise ValueError(f"logits have {dims[1]} classes but there are {len(self.labels)} labels")
        if (blur := self.blur_type_output) is not None and (len(blur.dims) != 2 or blur.dims[1] != 2):
            raise ValueError(f"blur_type_logits are [-1, 2] ([defocus, motion], softmax), not {list(blur.shape)}")

    def output(self, role: Role) -> OutputSpec:
        return next(o for o in self.outputs if o.role == role)

    @property
    def blur_type_output(self) -> OutputSpec | None:
        """A focus_classifier's optional ``blur_type_logits`` output."""
        return next((o for o in self.outputs if o.role == "blur_type_logits"), None)

    @property
    def motion_cut(self) -> float:
        """``motion_threshold``, or its default."""
        return MOTION_THRESHOLD if self.motion_threshold is None else self.motion_threshold


class Manifest(_Strict):
    schema_: Literal["colposcopy-gateway/models/1"] = Field(alias="schema")
    models: tuple[ModelSpec, ...] = ()
    _root: Path = PrivateAttr(default=Path("."))

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be distinct: {names}")
        tasks = [m.task for m in self.models]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"at most one model per task: {tasks}")
        if len([t for t in tasks if t in FOCUS_TASKS]) > 1:
            raise ValueError("at most one focus model (focus_retinanet or focus_classifier)")
        return self

    @property
    def root(self) -> Path:
        """The manifest's folder: ONNX paths are relative to it."""
        return self._root

    def for_task(self, task: Task) -> ModelSpec | None:
        return next((m for m in self.models if m.task == task), None)

    def onnx_path(self, spec: ModelSpec) -> Path:
        return spec.onnx if spec.onnx.is_absolute() else self._root / spec.onnx


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _line_of(root: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line of the deepest node of ``loc`` present in the composed YAML."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def parse_manifest(text: str, source: str, root: Path) -> Manifest:
    """Validate manifest YAML (schema only; files are not read)."""
    try:
        data: Any = yaml.safe_load(text)
        tree = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ManifestError([f"{source}: YAML syntax error: {exc}"]) from None
    if not isinstance(data, dict):
        raise ManifestError([f"{source}: the top level must be a mapping with schema and models"])
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            line = _line_of(tree, loc)
            key = ".".join(str(p) for p in loc) or "(top level)"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{source}:{line if line is not None else '?'}: {key}: {message}")
        raise ManifestError(problems) from None
    manifest._root = root
    return manifest


def verify_files(manifest: Manifest) -> list[str]:
    """Every model's ONNX file exists and has the manifest's sha256; one problem per model that does not."""
    problems = []
    for spec in manifest.models:
        path = manifest.onnx_path(spec)
        if not path.is_file():
            problems.append(f"{spec.name}: ONNX file {path} does not exist")
            continue
        actual = sha256_file(path)
        if actual != spec.sha256:
            problems.append(f"{spec.name}: {path.name} has sha256 {actual}, the manifest says {spec.sha256}")
    return problems


def load_manifest(path: Path, check_files: bool = True) -> Manifest:
    """Read, validate and (by default) verify the ONNX files of a manifest; raise ManifestError naming problems."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read: {exc.strerror}"]) from None
    manifest = parse_manifest(text, str(path), path.parent)
    if check_files and (problems := verify_files(manifest)):
        raise ManifestError(problems)
    return manifest


def _shape_problem(what: str, expected: Shape, actual: Shape) -> str | None:
    if len(expected) != len(actual):
        return f"{what} has shape {list(actual)}, the manifest says {list(expected)}"
    for e, a in zip(expected, actual, strict=True):
        if e is not None and a is not None and e != a:
            return f"{what} has shape {list(actual)}, the manifest says {list(expected)}"
    return None


def check_signature(spec: ModelSpec, inputs: Mapping[str, Shape], outputs: Mapping[str, Shape]) -> None:
    """Check a loaded model's tensors (name -> shape) against the spec; raise ManifestError naming each mismatch."""
    problems = []
    expected = {spec.input.name: spec.input.dims}
    if spec.measures is not None:
        expected[spec.measures.name] = spec.measures.dims
    for name, dims in expected.items():
        if name not in inputs:
            problems.append(f"{spec.name}: no input named {name!r}; the model has {sorted(inputs)}")
        elif problem := _shape_problem(f"input {name!r}", dims, inputs[name]):
            problems.append(f"{spec.name}: {problem}")
    extra = sorted(set(inputs) - set(expected))
    if extra and not problems:
        problems.append(f"{spec.name}: the model has inputs {extra} the manifest does not describe")
    for out in spec.outputs:
        if out.name not in outputs:
            problems.append(f"{spec.name}: no output named {out.name!r} ({out.role}); the model has {sorted(outputs)}")
        elif problem := _shape_problem(f"output {out.name!r}", out.dims, outputs[out.name]):
            problems.append(f"{spec.name}: {problem}")
    if problems:
        raise ManifestError(problems)
