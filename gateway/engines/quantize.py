"""INT8 by explicit quantization: ONNX Runtime's static quantization writes a QDQ ONNX that TensorRT builds.

Calibration data are real photos from a folder, preprocessed exactly as the model's input spec says.
Symmetric INT8 for activations and weights, per-channel weights, QDQ format: what TensorRT expects of an
explicitly quantized network. Needs ``onnxruntime`` and ``onnx`` (the ``[onnx]`` extra); no GPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import structlog

from gateway.engines.cache import write_atomic
from gateway.models.manifest import ModelSpec
from gateway.models.preprocess import preprocess

log = structlog.get_logger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


class QuantizeError(RuntimeError):
    pass


def photo_paths(folder: Path, limit: int) -> list[Path]:
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if folder.is_dir() else []
    return photos[:limit]


class PhotoReader:
    """ONNX Runtime's ``CalibrationDataReader`` (it accepts any object with ``get_next``): one photo per call."""

    def __init__(self, spec: ModelSpec, photos: list[Path]) -> None:
        self._spec = spec
        self._photos = iter(photos)
        self.used = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        for path in self._photos:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("calibration_photo_unreadable", path=str(path))
                continue
            self.used += 1
            tensor, _ = preprocess(image, self._spec.input)
            return {self._spec.input.name: tensor.astype(np.float32)}
        return None


def quantize_qdq(source: Path, target: Path, spec: ModelSpec, calibration: Path, limit: int = 200) -> int:
    """Write the QDQ INT8 model of ``source`` to ``target``; returns the number of calibration photos used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if spec.input.dtype != "float32":
        raise QuantizeError(f"{spec.name}: INT8 quantization needs a float32 input, not {spec.input.dtype}")
    photos = photo_paths(calibration, limit)
    if not photos:
        raise QuantizeError(f"no .jpg/.jpeg/.png photos in {calibration} to calibrate {spec.name} with")
    reader = PhotoReader(spec, photos)
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "qdq.onnx"
        quantize_static(
            str(source),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        if reader.used == 0:
            raise QuantizeError(f"none of the photos in {calibration} could be read")
        write_atomic(target, out.read_bytes())
    log.info("quantized", model=spec.name, photos=reader.used, qdq=str(target))
    return reader.used
