"""The pure parts of gateway/training: degradation model, patient split, metrics, and an ONNX export round trip."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gateway.models.retinanet import decode_boxes, generate_anchors
from gateway.training import degradations as dg
from gateway.training.dataset import Photo, patient_split
from gateway.training.evaluate import Confusion, draw_roc, roc_auc, roc_curve, wilson


def _texture(seed: int = 0, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(30, 200, (size[0] // 4, size[1] // 4, 3)).astype(np.float32)
    fine = cv2.resize(base, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return np.clip(fine + rng.normal(0, 20, fine.shape), 0, 255).astype(np.uint8)


def _lapvar(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


# ------------------------------------------------------------------------------------------ degradations


@pytest.mark.parametrize("radius", [0.7, 2.0, 5.5])
def test_disk_kernel_is_normalised_round_and_sized(radius: float) -> None:
    k = dg.disk_kernel(radius)
    assert k.shape == (2 * math.ceil(radius) + 1,) * 2
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(k, k.T, atol=1e-6) and np.allclose(k, k[::-1], atol=1e-6)


def test_motion_kernel_follows_its_angle() -> None:
    horizontal = dg.motion_kernel(9, 0.0)
    assert horizontal.sum() == pytest.approx(1.0, abs=1e-5)
    c = horizontal.shape[0] // 2
    assert horizontal[c].sum() > 0.9  # the energy lies on the middle row
    vertical = dg.motion_kernel(9, 90.0)
    assert vertical[:, c].sum() > 0.9


@pytest.mark.parametrize(("length", "turn"), [(12.0, 1.0), (20.0, 1.5), (38.0, math.pi)])
def test_arc_kernel_is_a_curve_of_its_length(length: float, turn: float) -> None:
    k = dg.motion_kernel(length, 30.0, turn)
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    ys, xs = np.nonzero(k > 1e-4)
    chord = 2 * (length / turn) * math.sin(turn / 2)  # the end-to-end distance of the arc
    extent = math.hypot(xs.max() - xs.min(), ys.max() - ys.min())
    assert chord - 2 <= extent <= length + 3
    assert np.count_nonzero(k > 1e-4) <= 3 * length + 12  # a thin path, not a filled region

    def spread(kernel: np.ndarray) -> tuple[float, float, float]:
        """Across / along the path (variance ratio), and the centroid's offset from the kernel's centre."""
        ys, xs = np.nonzero(kernel > 1e-4)
        w = kernel[ys, xs]
        cy, cx = np.average(ys, weights=w), np.average(xs, weights=w)
        low, high = np.linalg.eigvalsh(np.cov(np.stack([xs - cx, ys - cy]), aweights=w))
        return low / high, cx - kernel.shape[1] // 2, cy - kernel.shape[0] // 2

    ratio, dx, dy = spread(k)
    straight, _, _ = spread(dg.motion_kernel(length, 30.0))
    assert ratio > 2 * straight + 0.005  # bent: its spread across the chord grows with the turn
    assert abs(dx) < 1 and abs(dy) < 1  # centred: the photo does not shift


def test_half_the_motion_draws_are_curved() -> None:
    draws = [dg.sample("motion", np.random.default_rng(i)) for i in range(200)]
    curved = [d.curve for d in draws if d.curve > 0]
    assert 70 <= len(curved) <= 130
    assert all(dg.ARC_TURN[0] <= c <= dg.ARC_TURN[1] for c in curved)
    assert all(
        d.curve == 0
        for kind in ("sharp", "defocus", "cervix_blur")
        for d in [dg.sample(kind, np.random.default_rng(1))]
    )


@pytest.mark.parametrize("kind", dg.KINDS)
def test_samples_stay_in_their_ranges_and_are_deterministic(kind: dg.Kind) -> None:
    draws = [dg.sample(kind, np.random.default_rng(i)) for i in range(50)]
    lo, hi = dg.BLUR_RANGES[kind]
    assert all(lo <= d.blur <= hi for d in draws)
    assert all(dg.NOISE_STD[0] <= d.noise_std <= dg.NOISE_STD[1] for d in draws)
    assert all(dg.JPEG_QUALITY[0] <= d.jpeg_quality <= dg.JPEG_QUALITY[1] for d in draws)
    assert all(d.not_sharp == (kind != "sharp") for d in draws)
    assert dg.sample(kind, np.random.default_rng(7)) == dg.sample(kind, np.random.default_rng(7))


def test_blur_lowers_detail_and_sharp_is_untouched() -> None:
    image = _texture()
    box = (60.0, 40.0, 260.0, 200.0)
    sharp = dg.Degradation("sharp", 0.0, 0.0, 0.0, 95, False)
    assert dg.blur(image, box, sharp) is image
    for kind in ("defocus", "motion"):
        d = dg.Degradation(kind, dg.BLUR_RANGES[kind][1], 30.0, 0.0, 95, False)  # type: ignore[arg-type]
        assert _lapvar(dg.blur(image, box, d)) < 0.3 * _lapvar(image)


def test_defocused_highlights_stay_saturated() -> None:
    image = np.full((64, 64, 3), 60, np.uint8)
    image[30:34, 30:34] = 255  # a specular glint
    d = dg.Degradation("defocus", 0.05, 0.0, 0.0, 95, False)
    out = dg.blur(image, (0.0, 0.0, 64.0, 64.0), d)
    assert int((out.max(axis=2) >= 250).sum()) > 16  # a larger clipped patch, not a faint smudge
    plain = cv2.filter2D(image, -1, dg.disk_kernel(3.2))
    assert int((plain.max(axis=2) >= 250).sum()) < int((out.max(axis=2) >= 250).sum())


def test_per_channel_highlights_boost_only_the_channel_near_clipping() -> None:
    image = np.full((64, 64, 3), 60, np.uint8)
    image[24:40, 24:40] = (120, 120, 255)  # BGR: red tissue clipped in red only
    box = (0.0, 0.0, 64.0, 64.0)
    by_pixel = dg.blur(image, box, dg.Degradation("defocus", 0.05, 0.0, 0.0, 95, False))
    by_channel = dg.blur(image, box, dg.Degradation("defocus", 0.05, 0.0, 0.0, 95, False, per_channel=True))
    plain = cv2.filter2D(image, -1, dg.disk_kernel(3.2), borderType=cv2.BORDER_REFLECT)
    centre = (slice(30, 34), slice(30, 34))
    assert (by_channel[centre][..., 2] == 255).all() and (by_pixel[centre][..., 2] == 255).all()  # red: clipped
    assert (by_pixel[centre] == 255).all()  # by the pixel's brightest channel: a white blob
    assert (by_channel[centre][..., :2] == 120).all()  # by channel: blue and green as they were
    rim = (slice(40, 42), slice(24, 40))  # just outside the patch: blue and green spread as measured
    assert np.abs(by_channel[rim][..., :2].astype(int) - plain[rim][..., :2]).max() <= 1
    assert (by_pixel[rim][..., :2].astype(int) > plain[rim][..., :2].astype(int) + 20).all()  # swollen by x4
    assert (by_channel[rim][..., 2] > plain[rim][..., 2]).all()  # red, the clipped channel, still swells


def test_haze_and_glints_apply_to_any_class() -> None:
    image = _texture(4)
    hazy = dg.add_haze(image, 0.2)
    assert hazy.std() < image.std()
    glinted = dg.draw_glints(image, np.random.default_rng(0), (50.0, 50.0, 250.0, 200.0))
    assert int((glinted == 255).all(axis=2).sum()) > 20
    d = dg.sample("sharp", np.random.default_rng(0))
    assert 0.0 <= d.haze <= dg.HAZE[1]


def test_cervix_only_blur_leaves_the_surroundings_sharp() -> None:
    image = _texture(1)
    box = (100.0, 70.0, 220.0, 170.0)
    d = dg.Degradation("cervix_blur", 0.025, 0.0, 0.0, 95, False)
    out = dg.blur(image, box, d)
    inner = (slice(100, 140), slice(140, 180))
    corner = (slice(0, 40), slice(0, 60))
    assert np.array_equal(out[corner], image[corner])
    assert _lapvar(out[inner]) < 0.5 * _lapvar(image[inner])
    mask = dg.cervix_mask(image.shape[:2], box)
    assert mask.max() == pytest.approx(1.0, abs=0.02) and mask[0, 0] == pytest.approx(0.0, abs=1e-3)


def test_degrade_is_deterministic_and_marks_stay_crisp() -> None:
    image = np.full((240, 320, 3), 128, np.uint8)
    box = (40.0, 30.0, 280.0, 210.0)
    d = dg.Degradation("defocus", 0.02, 0.0, 3.0, 90, True)
    a = dg.degrade(image, box, d, np.random.default_rng(3))
    b = dg.degrade(image, box, d, np.random.default_rng(3))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    # marks are drawn after the blur: a flat grey photo gains sharp edges on the blurred version too
    marked = dg.draw_marks(cv2.GaussianBlur(image, (0, 0), 3), np.random.default_rng(0), box)
    for seed in range(1, 6):
        marked = dg.draw_marks(marked, np.random.default_rng(seed), box)
    assert _lapvar(marked) > 10.0


def test_jpeg_and_noise_keep_the_image() -> None:
    image = _texture(2)
    noisy = dg.add_noise(image, 4.0, np.random.default_rng(0))
    assert 2.0 < float(np.abs(noisy.astype(int) - image.astype(int)).mean()) < 5.0
    assert dg.jpeg(image, 90).shape == image.shape


# ------------------------------------------------------------------------------------------ patient split


def _photos() -> list[Photo]:
    photos = []
    for c in range(30):
        case = f"C{c:02d}"
        for i in range(4):
            focus = "blurry" if (c % 7 == 0 and i == 0) else "sharp"
            photos.append(Photo(Path(f"{case}_{i}.jpg"), case, "acetic", focus, (0.2, 0.2, 0.8, 0.8), False))
    return photos


def test_split_is_by_patient_reproducible_and_keeps_blurry_patients_for_validation() -> None:
    photos = _photos()
    split = patient_split(photos, seed=0)
    assert not set(split.train) & set(split.validation)
    assert set(split.train) | set(split.validation) == {p.case for p in photos}
    assert {p.case for p in photos if p.focus == "blurry"} <= set(split.validation)
    assert len(split.validation) == round(0.4 * 30)
    assert patient_split(photos, seed=0) == split
    assert patient_split(photos, seed=1).validation != split.validation
    assert "seed 0" in split.describe()


# ------------------------------------------------------------------------------------------ metrics


def test_wilson_interval() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_confusion_metrics() -> None:
    truth = [True, True, True, False, False, False, False]
    pred = [True, True, False, True, False, False, False]
    c = Confusion.of(truth, pred)
    assert (c.tp, c.fn, c.fp, c.tn) == (2, 1, 1, 3)
    assert c.accuracy == pytest.approx(5 / 7)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3)
    assert c.specificity == pytest.approx(3 / 4)
    assert c.f1 == pytest.approx(2 / 3)
    assert c.summary()["confusion"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}


def test_roc_auc_and_curve() -> None:
    truth = [True, True, False, False]
    assert roc_auc(truth, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc(truth, [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert roc_auc(truth, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc(truth, [0.9, 0.3, 0.5, 0.1]) == 0.75
    curve = roc_curve(truth, [0.9, 0.3, 0.5, 0.1])
    assert curve[0] == (0.0, 0.0) and curve[-1] == (1.0, 1.0)
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in itertools.pairwise(curve))


def test_roc_png_is_drawn(tmp_path: Path) -> None:
    truth = [True, False, True, False]
    draw_roc({"model": roc_curve(truth, [0.9, 0.1, 0.8, 0.3])}, tmp_path / "roc.png", size=200)
    image = cv2.imread(str(tmp_path / "roc.png"))
    assert image is not None and image.shape == (300, 300, 3)


# ------------------------------------------------------------------------------------------ torch parts


def test_box_coding_round_trips_through_the_gateway_decoder() -> None:
    pytest.importorskip("torch")
    from gateway.training.model import DETECTOR_ANCHORS, encode_boxes, match

    anchors = generate_anchors(DETECTOR_ANCHORS, 320, 320).boxes.astype(np.float64)
    box = np.array([50.0, 40.0, 250.0, 210.0])
    labels, targets = match(anchors, box)
    positive = labels > 0
    assert positive.any() and not (labels[~positive] > 0).any()
    decoded = decode_boxes(targets[positive], anchors[positive])
    assert np.allclose(decoded, box, atol=1e-3)
    assert np.allclose(encode_boxes(box[None], anchors[:1]).shape, (1, 4))
    none_labels, _ = match(anchors, None)
    assert not none_labels.any()


def test_detector_head_flattens_in_torchvision_order() -> None:
    torch = pytest.importorskip("torch")
    from gateway.training.model import DetectorHead

    head = DetectorHead(64)
    a, h, w = head.anchors, 4, 4
    x = torch.zeros(1, a * 1, h, w)
    x[0, 5, 2, 3] = 1.0  # anchor 5 at row 2, column 3
    flat = head._flatten(x, 1, (h, w))
    assert flat.shape == (1, h * w * a, 1)
    assert int(flat[0, :, 0].argmax()) == (2 * w + 3) * a + 5
    cls, reg = head(torch.zeros(2, 112, 4, 4), torch.zeros(2, 320, 2, 2))
    count = DetectorHead(64).anchors * (16 + 4 + 1)
    assert cls.shape == (2, count, 1) and reg.shape == (2, count, 4)


def test_focal_loss_ignores_and_down_weights() -> None:
    torch = pytest.importorskip("torch")
    from gateway.training.model import focal_loss

    logits = torch.tensor([5.0, -5.0, 0.0, 3.0])
    labels = torch.tensor([1.0, 0.0, 1.0, -1.0])
    loss = focal_loss(logits, labels)
    easy = focal_loss(logits[:2], labels[:2])
    assert float(easy) < 1e-4 < float(loss)
    assert float(focal_loss(logits[3:], labels[3:])) == 0.0


def _tiny_features() -> Any:
    """A conv layer pooled as the focus features are (mean and mean |x| per channel): 8 features."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.relu(self.conv(x))
            return torch.cat([f.mean(dim=(2, 3)), f.abs().mean(dim=(2, 3))], dim=1)

    return Tiny()


def test_onnx_export_round_trip_of_a_tiny_classifier(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from torch import nn

    from gateway.backends.neural import ClassifierFocus
    from gateway.models.manifest import load_manifest
    from gateway.runtimes.onnxruntime import OnnxRuntime
    from gateway.training import export
    from gateway.training.model import FocusHead
    from tests.onnx_models import classifier_entry, write_manifest

    torch.manual_seed(0)
    net = nn.Sequential(_tiny_features(), FocusHead(features=8, hidden=4)).eval()
    from gateway.models.manifest import InputSpec

    spec = InputSpec(name="crops", shape=(-1, 3, 32, 32), resize="stretch")
    path = export.export_onnx(net, tmp_path / "tiny.onnx", spec, ["logits"])
    assert export.check_parity(net, path, spec) < 1e-4
    assert set(export.ops(path)) <= {"Conv", "Relu", "ReduceMean", "Abs", "Concat", "Sub", "Div", "Gemm"}
    manifest = load_manifest(write_manifest(tmp_path, [classifier_entry(path, size=32, threshold=0.5)]))
    spec_m = manifest.models[0]
    focus = ClassifierFocus(spec_m, OnnxRuntime(path))
    image = _texture(3, (48, 64))
    finding = focus.judge(image, None)
    from gateway.models.preprocess import preprocess

    tensor, _ = preprocess(image, spec_m.input)
    with torch.no_grad():
        expected = float(torch.softmax(net(torch.from_numpy(tensor)), dim=1)[0, 1])
    assert finding.measure == pytest.approx(expected, abs=1e-4)
    entry = export.entry("tiny", "0.0.1", "focus_classifier", path, spec, [])
    assert entry["sha256"] == spec_m.sha256 and entry["input"]["shape"] == [-1, 3, 32, 32]


def test_a_fused_classifier_exports_with_its_measures_and_runs_as_the_gateway_feeds_it(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")

    from gateway.backends.neural import ClassifierFocus
    from gateway.focus_measures import FOCUS_V1, focus_v1
    from gateway.models.manifest import InputSpec, load_manifest
    from gateway.runtimes.onnxruntime import OnnxRuntime
    from gateway.training import export
    from gateway.training.model import FocusHead, FusedFocusNet
    from tests.onnx_models import classifier_entry, write_manifest

    torch.manual_seed(0)
    k = len(FOCUS_V1)
    head = FocusHead(features=8, hidden=4, measures=k)
    head.set_standardisation(torch.randn(64, 8 + k))
    net = FusedFocusNet(_tiny_features(), head).eval()
    spec = InputSpec(name="crops", shape=(-1, 3, 32, 32), resize="stretch")
    path = export.export_onnx(net, tmp_path / "fused.onnx", spec, ["logits"], {"measures": k})
    assert export.check_parity(net, path, spec, extra={"measures": k}) < 1e-4
    measures = {"name": "measures", "set": "focus-v1", "count": k}
    entry = classifier_entry(path, size=32, threshold=0.5, measures=measures)
    manifest = load_manifest(write_manifest(tmp_path, [entry]))
    focus = ClassifierFocus(manifest.models[0], OnnxRuntime(path))
    image, box = _texture(3, (240, 320)), (0.2, 0.2, 0.8, 0.8)
    finding = focus.judge(image, box)
    from gateway.models.preprocess import crop, preprocess

    tensor, _ = preprocess(crop(image, box, manifest.models[0].crop_margin), manifest.models[0].input)
    with torch.no_grad():
        logits = net(torch.from_numpy(tensor), torch.from_numpy(focus_v1(image, box)[None]))
    assert finding.measure == pytest.approx(float(torch.softmax(logits, dim=1)[0, 1]), abs=1e-4)


def test_the_operating_point_rule() -> None:
    pytest.importorskip("torch")
    from gateway.training.train import operating_point

    # sharp scores 0.50..0.99, blurred 0.00..0.39: R is the acceptance floor, the sharp draws' quantile at
    # 0.05 - 1.645 sqrt(0.05 * 0.95 / 1000) = 0.0387; the band is the minimum since b99.5 lies below R
    sharp = np.linspace(0.5, 0.99, 1000)
    blurred = np.linspace(0.0, 0.39, 1000)
    scores, is_sharp = np.concatenate([sharp, blurred]), np.arange(2000) < 1000
    point = operating_point(scores, is_sharp)
    assert point.recapture == pytest.approx(np.quantile(sharp, 0.05 - 1.645 * np.sqrt(0.05 * 0.95 / 1000)))
    assert point.recapture == pytest.approx(0.519, abs=1e-3)
    assert point.threshold == pytest.approx(point.recapture + 0.01)
    assert point.facts["cv_sharp_accepted"] == pytest.approx(0.961, abs=1e-3)
    assert point.facts["cv_blurred_recaptured"] == 1.0
    # overlapping classes: the floor does not move for the blurred draws; the band reaches up to b99.5 and the
    # recall target is reported as missed
    blurred = np.linspace(0.2, 0.8, 1000)
    overlapping = operating_point(np.concatenate([sharp, blurred]), is_sharp)
    assert overlapping.recapture == point.recapture
    assert overlapping.threshold == pytest.approx(np.quantile(blurred, 0.995))
    assert overlapping.facts["b98"] > overlapping.recapture and overlapping.facts["cv_blurred_recaptured"] < 0.98


def test_the_acceptance_floor_holds_with_the_confidence_it_claims() -> None:
    pytest.importorskip("torch")
    from gateway.training.train import acceptance_floor

    # sharp scores uniform on 0..1: a floor f accepts 1 - f of the population. Over 2000 training sets of 300
    # draws, the floor accepts at least 95 % in about 95 % of them; the plain 5th percentile in about half
    rng = np.random.default_rng(0)
    sets = rng.uniform(0.0, 1.0, (2000, 300))
    floors = np.array([acceptance_floor(s) for s in sets])
    plain = np.quantile(sets, 0.05, axis=1)
    assert 0.93 <= np.mean(1.0 - floors >= 0.95) <= 0.97
    assert 0.40 <= np.mean(1.0 - plain >= 0.95) <= 0.60
    assert acceptance_floor(sets[0][:100]) < acceptance_floor(sets[0])  # fewer draws, more margin
    with pytest.raises(ValueError, match="51 sharp draws"):  # no quantile of 51 gives that confidence
        acceptance_floor(sets[0][:51])
    q52 = 0.05 - 1.645 * np.sqrt(0.05 * 0.95 / 52)  # 0.0003: about the lowest of 52
    assert acceptance_floor(sets[0][:52]) == pytest.approx(np.quantile(sets[0][:52], q52))


def test_the_focus_cache_is_read_only_for_the_same_samples(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from gateway.progress import BuildProgress
    from gateway.training.train import TrainOptions, cached_focus_features

    options = TrainOptions(tmp_path, tmp_path, seed=3, focus_cache=tmp_path / "focus.npz")
    x, y, groups = np.ones((4, 5), np.float32), np.array([1, 0, 1, 0], np.float32), np.array(list("aabb"))
    motion, device = np.array([-1, 1, -1, 0], np.int8), np.array([False, False, True, True])
    key = np.array(options.focus_key())
    np.savez(tmp_path / "focus.npz", x=x, y=y, groups=groups, motion=motion, device=device, key=key)
    data = cached_focus_features(options, [], None, BuildProgress("t"))  # type: ignore[arg-type]
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y) and list(data.groups) == list("aabb")
    assert list(data.motion) == [-1, 1, -1, 0] and list(data.device) == [False, False, True, True]
    other = TrainOptions(tmp_path, tmp_path, seed=4, focus_cache=tmp_path / "focus.npz")
    assert other.focus_key() != options.focus_key()
    with pytest.raises(AttributeError):  # another seed's samples: recomputed, which needs a real extractor
        cached_focus_features(other, [], None, BuildProgress("t"))  # type: ignore[arg-type]


def test_training_rescales_never_enlarge_the_cervix_when_asked() -> None:
    pytest.importorskip("torch")
    from gateway.training.train import TrainOptions, training_scale

    def factors(width: float, never_enlarge: bool) -> np.ndarray:
        rng = np.random.default_rng(5)
        return np.array([training_scale(width, rng, never_enlarge) for _ in range(400)])

    wide = factors(600.0, True)  # shrunk at most to the crop's 320 px: the crop then never enlarges it
    assert wide.min() >= 320 / 600 - 1e-9 and wide.max() <= 1.0 and wide.min() < 0.6
    assert set(factors(250.0, True)) == {1.0}  # already narrower than in the crop: never shrunk further
    old = factors(600.0, False)  # 1.3.0's recipe: 0.45-1 whatever the size, the same draws as before
    assert 0.45 <= old.min() < 0.47 and old.max() <= 1.0
    assert np.array_equal(old, np.exp(np.random.default_rng(5).uniform(math.log(0.45), 0.0, 400)))
    assert (
        TrainOptions(Path("d"), Path("o"), never_enlarge=True).focus_key()
        != TrainOptions(Path("d"), Path("o")).focus_key()
    )


def test_close_up_draws_are_a_part_of_the_cervix_that_the_crop_never_enlarges() -> None:
    pytest.importorskip("torch")
    from gateway.training.train import TrainOptions, zoom_box

    image = np.zeros((600, 800, 3), np.uint8)
    box = (0.1, 0.1, 0.85, 0.9)  # 600 x 480 px
    rng = np.random.default_rng(2)
    for _ in range(200):
        x0, y0, x1, y1 = zoom_box(box, image, rng)
        assert box[0] - 1e-9 <= x0 < x1 <= box[2] + 1e-9 and box[1] - 1e-9 <= y0 < y1 <= box[3] + 1e-9
        fraction = (x1 - x0) / (box[2] - box[0])
        assert 0.5 - 1e-9 <= fraction <= 0.8 + 1e-9  # 320 px is below half of 600: the range is whole
        assert (y1 - y0) / (box[3] - box[1]) == pytest.approx(fraction)  # same aspect
    narrow = (0.3, 0.2, 0.75, 0.8)  # 360 px: at least 320 px of it, so 0.889 of its width every time
    widths = {round((b[2] - b[0]) * 800, 6) for b in (zoom_box(narrow, image, rng) for _ in range(20))}
    assert widths == {320.0}
    small = (0.4, 0.4, 0.7, 0.7)  # 240 px, already narrower than in the crop: the whole box
    assert zoom_box(small, image, rng) == pytest.approx(small)
    assert (
        TrainOptions(Path("d"), Path("o"), zoom_variants=8).focus_key()
        != TrainOptions(Path("d"), Path("o")).focus_key()
    )
    assert " zoom" not in TrainOptions(Path("d"), Path("o")).focus_key()  # 1.3.0's caches stay valid


def test_the_operating_point_takes_its_acceptance_floor_on_the_device_like_draws() -> None:
    pytest.importorskip("torch")
    from gateway.training.train import acceptance_floor, operating_point

    # atlas draws (many, a low sharp tail: close-ups) and device-like draws (fewer, blurred ones scoring higher):
    # the device-like sharp draws set the floor, the atlas tail does not pull it down, the atlas acceptance is
    # reported; b98 and b99.5 are the higher of the two sources'
    rng = np.random.default_rng(0)
    atlas_sharp = np.concatenate([rng.uniform(0.5, 1.0, 3600), rng.uniform(0.1, 0.4, 400)])
    atlas_blurred, device_sharp, device_blurred = (
        rng.uniform(0.0, 0.1, 4000),
        rng.uniform(0.5, 1.0, 500),
        rng.uniform(0.0, 0.48, 500),
    )
    scores = np.concatenate([atlas_sharp, atlas_blurred, device_sharp, device_blurred])
    sharp = np.repeat([True, False, True, False], [4000, 4000, 500, 500])
    device = np.repeat([False, False, True, True], [4000, 4000, 500, 500])
    pooled = operating_point(scores, sharp)
    served = operating_point(scores, sharp, device)
    assert served.recapture == pytest.approx(acceptance_floor(device_sharp))
    assert pooled.recapture < 0.4 < served.recapture  # pooled, the close-ups' tail sets the floor
    assert served.facts["cv_sharp_accepted_atlas"] == pytest.approx(np.mean(atlas_sharp >= served.recapture))
    assert served.facts["cv_sharp_accepted_atlas"] < 0.95
    assert served.facts["b98"] == pytest.approx(np.quantile(device_blurred, 0.98))
    assert served.facts["b995"] == pytest.approx(np.quantile(device_blurred, 0.995))


def test_a_fused_classifier_with_a_blur_type_head_exports_both_outputs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from gateway.focus_measures import FOCUS_V1
    from gateway.models.manifest import InputSpec
    from gateway.training import export
    from gateway.training.model import FocusHead, FusedFocusNet

    torch.manual_seed(0)
    k = len(FOCUS_V1)
    heads = [FocusHead(features=8, hidden=4, measures=k) for _ in range(2)]
    for h in heads:
        h.set_standardisation(torch.randn(64, 8 + k))
    net = FusedFocusNet(_tiny_features(), heads[0], heads[1]).eval()
    spec = InputSpec(name="crops", shape=(-1, 3, 32, 32), resize="stretch")
    path = export.export_onnx(net, tmp_path / "typed.onnx", spec, ["logits", "blur_type_logits"], {"measures": k})
    assert export.check_parity(net, path, spec, extra={"measures": k}) < 1e-4
    outputs = export.session(path).run(
        None, {"crops": np.zeros((3, 3, 32, 32), np.float32), "measures": np.ones((3, k), np.float32)}
    )
    assert [o.shape for o in outputs] == [(3, 2), (3, 2)]
    assert not np.allclose(outputs[0], outputs[1])  # two heads, not one output twice


def test_the_blur_type_head_learns_motion_from_the_blurred_draws_only() -> None:
    torch = pytest.importorskip("torch")
    from gateway.training.train import FocusSet, TrainOptions, blur_type_head

    rng = np.random.default_rng(0)
    n = 400
    motion = np.where(np.arange(n) % 3 == 0, -1, np.arange(n) % 2).astype(np.int8)  # a third sharp
    x = rng.normal(0, 1, (n, 6)).astype(np.float32)
    x[:, 5] += 3.0 * (motion == 1)  # the last measure says motion
    x[motion == -1, 5] = 50.0  # sharp draws would mislead the head if it saw them
    data = FocusSet(x, (motion == -1).astype(np.float32), np.array([f"p{i % 10}" for i in range(n)]), motion,
                    np.arange(n) % 4 == 0)  # fmt: skip
    options = TrainOptions(Path("."), Path("."), seed=0, focus_epochs=60)
    head, facts = blur_type_head(data, options, measures=1)
    assert facts["cv_blur_type_right"] > 0.9 and facts["cv_motion_typed_motion"] > 0.85
    with torch.no_grad():
        p = torch.softmax(head(torch.from_numpy(x[motion >= 0])), dim=1)[:, 1].numpy()
    assert np.mean((p >= 0.5) == (motion[motion >= 0] == 1)) > 0.9
