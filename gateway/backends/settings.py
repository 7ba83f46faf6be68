"""The ``models:`` section of the config: where the manifest and the engine cache are, how engines are built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

REPO_MANIFEST = Path(__file__).resolve().parents[2] / "engines" / "manifest.yaml"
"""The manifest of a source checkout (or editable install)."""


def default_cache_dir() -> Path:
    """Under systemd (``CacheDirectory=``): ``$CACHE_DIRECTORY/engines``, i.e. /var/cache/colposcopy-gateway/engines;
    else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/colposcopy-gateway/engines``."""
    if systemd := os.environ.get("CACHE_DIRECTORY"):
        return Path(systemd.split(":")[0]) / "engines"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "colposcopy-gateway" / "engines"


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: Path | None = Field(
        default=None, description="The model manifest; unset: engines/manifest.yaml of the source checkout"
    )
    engine_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT plans and timing caches; unset: /var/cache/colposcopy-gateway/engines under systemd",
    )
    build_in_background: bool = Field(
        default=True,
        description="Build missing or stale TensorRT plans at start while serving through ONNX Runtime",
    )
    precision: Literal["fp16", "fp32", "int8"] = Field(
        default="fp16", description="TensorRT plans to load and build; int8 needs calibration_dir"
    )
    calibration_dir: Path | None = Field(
        default=None, description="Photos for INT8 quantization (ONNX Runtime QDQ), only with precision: int8"
    )
    max_batch: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Largest batch: photos of several devices judged in one run, and the TensorRT profile's maximum",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="How long a batch waits for more photos; 0: batch only photos already waiting, never wait",
    )
    workspace_mb: int = Field(
        default=1024, ge=64, description="TensorRT builder workspace's upper limit (less when memory is short)"
    )
    build_timeout_s: float = Field(
        default=7200, ge=10, description="A background engine build still running after this long is stopped"
    )
    gpu: int = Field(default=0, ge=0, description="CUDA device index")
    onnxruntime_providers: tuple[str, ...] = Field(
        default=(),
        description="ONNX Runtime execution providers in order; empty: CUDA, CPU, whichever exist (TensorRT's only"
        " when named: it builds its own engine, uncached, on the first photo)",
    )
    onnxruntime_threads: int = Field(default=0, ge=0, le=64, description="Threads per session; 0: ONNX Runtime's")
    onnxruntime_memory_arena: bool = Field(
        default=False,
        description="ONNX Runtime's CPU memory arena; it never gives memory back, so off: tensors come from malloc",
    )

    def manifest_path(self) -> Path:
        return self.manifest if self.manifest is not None else REPO_MANIFEST

    def cache_dir(self) -> Path:
        return self.engine_cache_dir if self.engine_cache_dir is not None else default_cache_dir()
