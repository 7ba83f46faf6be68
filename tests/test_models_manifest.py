"""The manifest: schema, sha256 of the ONNX files, the contract per task, and checks against a loaded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.focus_measures import FOCUS_V1
from gateway.models.manifest import ManifestError, check_signature, load_manifest, parse_manifest
from tests.onnx_models import (
    BLUR_TYPE_OUTPUT,
    DETECTOR_CLS,
    DETECTOR_REG,
    classifier_entry,
    constant_retinanet,
    detector_and_classifier,
    detector_entry,
    fused_classifier,
    mean_classifier,
    typed_classifier,
    typed_entry,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]


def problems(tmp_path: Path, entries: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(write_manifest(tmp_path, entries))
    return caught.value.problems


@pytest.fixture
def det(tmp_path: Path) -> Path:
    return constant_retinanet(tmp_path / "detector.onnx", 32, DETECTOR_CLS, DETECTOR_REG)


def test_the_repository_manifest_is_valid_and_its_example_too() -> None:
    path = REPO / "engines" / "manifest.yaml"
    assert {m.task for m in load_manifest(path).models} == {"cervix_detector", "focus_classifier"}
    example = "\n".join(line[2:] for line in path.read_text().splitlines() if line.startswith(("# -", "#  ")))
    manifest = parse_manifest(f"schema: colposcopy-gateway/models/1\nmodels:\n{example}", "example", path.parent)
    (spec,) = manifest.models
    assert spec.task == "cervix_detector" and spec.anchors is not None
    assert spec.anchors.count(320, 320) == 18900 == spec.output("cls_logits").shape[1]


def test_the_benchmarks_first_release_manifest_still_loads() -> None:
    """bench/gateway_bench.py times the 1.0.0 models beside the shipped ones (the speed target's "today"): a
    manifest of the first release's form, its ONNX files in engines/ with their digests."""
    manifest = load_manifest(REPO / "bench" / "baseline-1.0.0.yaml")
    assert [(m.task, m.version, m.measures) for m in manifest.models] == [
        ("cervix_detector", "1.0.0", None),
        ("focus_classifier", "1.0.0", None),
    ]


def test_a_valid_manifest_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    manifest = load_manifest(detector_and_classifier(tmp_path))
    assert [m.name for m in manifest.models] == ["cervix-detector", "focus-classifier"]
    detector = manifest.for_task("cervix_detector")
    assert detector is not None and manifest.onnx_path(detector) == tmp_path / "detector.onnx"
    assert manifest.for_task("focus_retinanet") is None


def test_a_wrong_sha256_names_the_file_and_both_digests(tmp_path: Path, det: Path) -> None:
    entry = detector_entry(det, sha256="0" * 64)
    (problem,) = problems(tmp_path, [entry])
    assert problem.startswith("cervix-detector: detector.onnx has sha256 ")
    assert problem.endswith("the manifest says " + "0" * 64)


def test_a_missing_onnx_file_is_named(tmp_path: Path, det: Path) -> None:
    (problem,) = problems(tmp_path, [detector_entry(det, onnx="gone.onnx")])
    assert problem == f"cervix-detector: ONNX file {tmp_path / 'gone.onnx'} does not exist"


def test_schema_problems_name_line_and_key(tmp_path: Path, det: Path) -> None:
    entry = detector_entry(det)
    entry["input"] = {**entry["input"], "shape": [-1, 1, 32, 32], "colour": "yuv"}
    entry["typo"] = 1
    found = problems(tmp_path, [entry])
    assert any(
        p.endswith("models.0.input.shape: Value error, images have 3 channels: shape is [N, 3, H, W]") for p in found
    ), found
    assert any("models.0.input.colour: Input should be 'rgb' or 'bgr'" in p for p in found), found
    assert any(p.endswith("models.0.typo: unknown key") for p in found), found
    assert all(p.split(":")[1].isdigit() for p in found), found  # every problem has its line


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": ["sharp", "not_sharp"]}, "a cervix_detector's labels include cervix"),
        ({"anchors": None}, "a cervix_detector needs anchors"),
        (
            {"anchors": {"strides": [16, 32], "sizes": [16]}},
            "2 strides but 1 sizes: one size per level",
        ),
        (
            {"anchors": {"strides": [16], "sizes": [16], "aspect_ratios": [0.5, 1.0], "scales": [1.0]}},
            "cls_logits has 4 anchors; the anchor spec gives 8 for 32x32",
        ),
        ({"anchors": {"strides": [12], "sizes": [16]}}, "input 32x32 is not divisible by the strides [12]"),
        ({"task": "focus_classifier"}, "a focus_classifier has outputs with roles ['logits']"),
        ({"threshold": 1.0}, "Input should be less than 1"),
    ],
)
def test_the_contract_per_task(tmp_path: Path, det: Path, change: dict[str, Any], message: str) -> None:
    found = problems(tmp_path, [detector_entry(det, **change)])
    assert any(message in p for p in found), found


def test_focus_models_have_their_labels(tmp_path: Path) -> None:
    cls = mean_classifier(tmp_path / "c.onnx", 16, 0, 1)
    found = problems(tmp_path, [classifier_entry(cls, labels=["blurred", "fine"])])
    assert any("a focus_classifier's labels include sharp" in p for p in found), found


def test_one_model_per_task_and_one_focus_model(tmp_path: Path, det: Path) -> None:
    cls = mean_classifier(tmp_path / "c.onnx", 16, 0, 1)
    twice = [detector_entry(det), detector_entry(det, name="other")]
    assert any("at most one model per task" in p for p in problems(tmp_path, twice))
    focus_retinanet = detector_entry(
        det, name="focus", task="focus_retinanet", labels=["sharp", "not_sharp"],
        outputs=[
            {"role": "cls_logits", "name": "cls_logits", "shape": [-1, 4, 2], "meaning": "focus logits"},
            {"role": "bbox_regression", "name": "bbox_regression", "shape": [-1, 4, 4], "meaning": "deltas"},
        ],
    )  # fmt: skip
    both = [focus_retinanet, classifier_entry(cls)]
    assert any("at most one focus model" in p for p in problems(tmp_path, both))


def test_check_signature_names_every_mismatch(tmp_path: Path) -> None:
    spec = load_manifest(detector_and_classifier(tmp_path)).models[0]
    check_signature(
        spec,
        {"images": (None, 3, 32, 32)},
        {"cls_logits": (None, 4, 1), "bbox_regression": (None, 4, 4)},
    )
    with pytest.raises(ManifestError) as caught:
        check_signature(spec, {"input": (1, 3, 32, 32)}, {"cls_logits": (None, 4, 2), "boxes": (None, 4, 4)})
    assert caught.value.problems == [
        "cervix-detector: no input named 'images'; the model has ['input']",
        "cervix-detector: output 'cls_logits' has shape [None, 4, 2], the manifest says [None, 4, 1]",
        "cervix-detector: no output named 'bbox_regression' (bbox_regression); the model has ['boxes', 'cls_logits']",
    ]


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(ManifestError, match="YAML syntax error"):
        load_manifest(bad)
    bad.write_text("- 1\n")
    with pytest.raises(ManifestError, match="top level must be a mapping"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "absent.yaml")


def test_a_fused_focus_model_names_its_classical_measures(tmp_path: Path) -> None:
    weights = np.zeros(len(FOCUS_V1), np.float32)
    fused = fused_classifier(tmp_path / "fused.onnx", 16, weights, 0.0)
    measures = {"name": "measures", "set": "focus-v1", "count": len(FOCUS_V1)}
    spec = load_manifest(write_manifest(tmp_path, [classifier_entry(fused, measures=measures)])).models[0]
    assert spec.measures is not None and spec.measures.dims == (None, len(FOCUS_V1))
    check_signature(spec, {"crops": (None, 3, 16, 16), "measures": (None, 14)}, {"logits": (None, 2)})
    with pytest.raises(ManifestError) as caught:
        check_signature(spec, {"crops": (None, 3, 16, 16), "measures": (None, 9)}, {"logits": (None, 2)})
    assert caught.value.problems == [
        "focus-classifier: input 'measures' has shape [None, 9], the manifest says [None, 14]"
    ]
    with pytest.raises(ManifestError, match="no input named 'measures'"):
        check_signature(spec, {"crops": (None, 3, 16, 16)}, {"logits": (None, 2)})


def test_a_manifest_of_today_has_no_measures_and_its_model_one_input(tmp_path: Path) -> None:
    spec = load_manifest(detector_and_classifier(tmp_path)).models[1]
    assert spec.measures is None and spec.recapture_threshold is None
    check_signature(spec, {"crops": (None, 3, 16, 16)}, {"logits": (None, 2)})
    with pytest.raises(ManifestError, match="inputs \\['measures'\\] the manifest does not describe"):
        check_signature(spec, {"crops": (None, 3, 16, 16), "measures": (None, 14)}, {"logits": (None, 2)})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"measures": {"name": "measures", "set": "focus-v9", "count": 14}}, "unknown feature set 'focus-v9'"),
        ({"measures": {"name": "measures", "set": "focus-v1", "count": 3}}, "has 14 values, not 3"),
        ({"measures": {"name": "crops", "set": "focus-v1", "count": 14}}, "distinct names"),
        ({"recapture_threshold": 0.7}, "lies below its threshold"),
    ],
)
def test_measures_and_recapture_threshold_are_checked(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    cls = mean_classifier(tmp_path / "classifier.onnx", 16, 0.0, 1.0)
    assert any(message in p for p in problems(tmp_path, [classifier_entry(cls, threshold=0.6, **changes)]))


def test_only_a_focus_classifier_takes_measures(tmp_path: Path, det: Path) -> None:
    entry = detector_entry(det, measures={"name": "measures", "set": "focus-v1", "count": 14})
    assert any("only a focus_classifier takes measures" in p for p in problems(tmp_path, [entry]))


# --- issue 12 item 6: a learned blur type, as an optional second output of the focus classifier


def test_a_focus_classifier_may_give_a_blur_type_with_its_motion_threshold(tmp_path: Path) -> None:
    typed = typed_classifier(tmp_path / "typed.onnx", 16, 1.0, 2.0)
    spec = load_manifest(write_manifest(tmp_path, [typed_entry(typed)])).models[0]
    blur = spec.blur_type_output
    assert blur is not None and (blur.name, blur.dims) == ("blur_type", (None, 2))
    assert spec.motion_threshold is None and spec.motion_cut == 0.5
    spec = load_manifest(write_manifest(tmp_path, [typed_entry(typed, motion_threshold=0.7)])).models[0]
    assert spec.motion_cut == 0.7
    check_signature(spec, {"crops": (None, 3, 16, 16)}, {"logits": (None, 2), "blur_type": (None, 2)})
    with pytest.raises(ManifestError) as caught:
        check_signature(spec, {"crops": (None, 3, 16, 16)}, {"logits": (None, 2)})
    assert caught.value.problems == [
        "focus-classifier: no output named 'blur_type' (blur_type_logits); the model has ['logits']"
    ]
    with pytest.raises(ManifestError, match=r"output 'blur_type' has shape \[None, 3\], the manifest says \[None, 2\]"):
        check_signature(spec, {"crops": (None, 3, 16, 16)}, {"logits": (None, 2), "blur_type": (None, 3)})


def test_a_manifest_of_today_has_no_blur_type_output(tmp_path: Path) -> None:
    spec = load_manifest(detector_and_classifier(tmp_path)).models[1]
    assert spec.blur_type_output is None and spec.motion_threshold is None
    assert [o.role for o in spec.outputs] == ["logits"]


LOGITS = {"role": "logits", "name": "logits", "shape": [-1, 2], "meaning": "[not_sharp, sharp] logits"}


@pytest.mark.parametrize(
    ("typed", "changes", "message"),
    [
        (False, {"motion_threshold": 0.6}, "motion_threshold belongs to a focus_classifier with a blur_type_logits"),
        (True, {"motion_threshold": 1.0}, "models.0.motion_threshold: Input should be less than 1"),
        (True, {"motion_threshold": 0.0}, "models.0.motion_threshold: Input should be greater than 0"),
        (
            True,
            {"outputs": [LOGITS, {**BLUR_TYPE_OUTPUT, "shape": [-1, 3]}]},
            "blur_type_logits are [-1, 2] ([defocus, motion], softmax), not [-1, 3]",
        ),
        (
            True,
            {"outputs": [LOGITS, {**BLUR_TYPE_OUTPUT, "shape": [-1, 2, 1]}]},
            "blur_type_logits are [-1, 2]",
        ),
        (
            True,
            {"outputs": [BLUR_TYPE_OUTPUT]},
            "a focus_classifier has outputs with roles ['logits'] (and optionally ['blur_type_logits']); this one has"
            " ['blur_type_logits']",
        ),
        (
            True,
            {
                "outputs": [
                    LOGITS,
                    BLUR_TYPE_OUTPUT,
                    {**BLUR_TYPE_OUTPUT, "name": "b"},
                ]
            },
            "this one has ['blur_type_logits', 'blur_type_logits', 'logits']",
        ),
    ],
)
def test_bad_blur_type_outputs_and_motion_thresholds_are_refused_naming_the_key(
    tmp_path: Path, typed: bool, changes: dict[str, Any], message: str
) -> None:
    path = tmp_path / "model.onnx"
    model = typed_classifier(path, 16, 1.0, 2.0) if typed else mean_classifier(path, 16, 0.0, 1.0)
    entry = typed_entry(model) if typed else classifier_entry(model)
    found = problems(tmp_path, [{**entry, **changes}])
    assert any(message in p and p.split(":")[1].isdigit() for p in found), found


def test_only_a_focus_classifier_has_a_blur_type(tmp_path: Path, det: Path) -> None:
    entry = detector_entry(det)
    entry["outputs"] = [*entry["outputs"], BLUR_TYPE_OUTPUT]
    found = problems(tmp_path, [entry])
    assert any(
        "a cervix_detector has outputs with roles ['cls_logits', 'bbox_regression']; this one" in p for p in found
    )
    found = problems(tmp_path, [detector_entry(det, motion_threshold=0.5)])
    assert any("motion_threshold belongs to a focus_classifier with a blur_type_logits output" in p for p in found)
