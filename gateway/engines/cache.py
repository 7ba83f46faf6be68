"""The engine cache: TensorRT plans keyed by everything a plan depends on.

A plan only loads on the TensorRT version and GPU it was built for ("Version tag does not match" after a
JetPack upgrade), and is only tuned for the device it was built on: every Orin is "Orin (nvgpu)" and sm87, so
the key also holds the device (board, multiprocessors, memory: Nano, NX and AGX differ), the CUDA driver and L4T
release, the QDQ file of an INT8 plan (a re-quantisation changes it) and ``RECIPE``. The file name holds the
readable parts and a digest of the whole key: after any change the gateway finds no plan for the new key and
builds one. Each plan has a JSON sidecar saying what it was built from, which ``doctor`` reads. Writes are
atomic (temporary file, then rename); builders hold ``lock()`` so two never write at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.models.manifest import Manifest, ModelSpec, sha256_file

RECIPE = "2"
"""How ``gateway/engines/build.py`` builds (flags, profile, memory pools): change it with the builder, and every
cached plan is rebuilt."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Target:
    """What a plan is built for."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    device: str = ""
    """Board, multiprocessors, memory (``GpuInfo.device``)."""
    cuda_driver: str = ""
    l4t: str = ""

    def slug(self) -> str:
        major, minor = self.compute_capability
        extra = (self.device, self.cuda_driver, self.l4t)
        more = f"_{_digest(extra)[:8]}" if any(extra) else ""
        return f"trt{self.tensorrt_version}_{_slug(self.gpu_name)}_sm{major}{minor}{more}"


@dataclass(frozen=True)
class PlanKey:
    model: str
    version: str
    onnx_sha256: str
    precision: str
    max_batch: int
    target: Target
    qdq_sha256: str | None = None
    """The QDQ ONNX an INT8 plan is built from."""
    recipe: str = RECIPE

    @classmethod
    def of(
        cls, spec: ModelSpec, precision: str, max_batch: int, target: Target, qdq_sha256: str | None = None
    ) -> PlanKey:
        return cls(spec.name, spec.version, spec.sha256, precision, max_batch, target, qdq_sha256, RECIPE)

    def filename(self) -> str:
        return (
            f"{self.model}-{_slug(self.version)}_{self.onnx_sha256[:16]}_{self.precision}_b{self.max_batch}"
            f"_{self.target.slug()}_{_digest(asdict(self))[:12]}.plan"
        )


FIRST_RETRY_S = 900.0
LAST_RETRY_S = 86400.0
"""A failed build is tried again after 15 minutes, then twice as long after each further failure, at most a day."""


@dataclass(frozen=True)
class Failure:
    count: int
    error: str
    retry_at: float
    """Epoch seconds."""


@dataclass(frozen=True)
class CachedPlan:
    path: Path
    meta: dict[str, Any] | None
    """The sidecar's content; None when it is missing or unreadable."""


class EngineCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def plan_path(self, key: PlanKey) -> Path:
        return self.root / key.filename()

    def key(self, spec: ModelSpec, precision: str, max_batch: int, target: Target) -> PlanKey:
        """The key of ``spec``'s plan; an INT8 plan's holds its QDQ file's sha256 ("none" before it is made)."""
        qdq = None
        if precision == "int8":
            path = self.qdq_path(spec)
            qdq = sha256_file(path) if path.is_file() else "none"
        return PlanKey.of(spec, precision, max_batch, target, qdq)

    def timing_cache_path(self, target: Target) -> Path:
        """Kept between builds: TensorRT reuses the kernel timings of earlier builds on the same GPU."""
        return self.root / f"timing_{target.slug()}.cache"

    def qdq_path(self, spec: ModelSpec) -> Path:
        """The INT8 (QDQ) ONNX made from ``spec``'s ONNX by ONNX Runtime's quantization."""
        return self.root / "qdq" / f"{spec.name}-{_slug(spec.version)}_{spec.sha256[:16]}_qdq.onnx"

    def find(self, key: PlanKey) -> Path | None:
        path = self.plan_path(key)
        return path if path.is_file() and path.stat().st_size > 0 else None

    def write_plan(self, key: PlanKey, plan: bytes) -> Path:
        path = self.plan_path(key)
        meta = {**asdict(key), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bytes": len(plan)}
        write_atomic(path, plan)
        write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        return path

    def _failure_path(self, key: PlanKey) -> Path:
        return self.plan_path(key).with_suffix(".failed.json")

    def failure(self, key: PlanKey) -> Failure | None:
        """The failed builds of ``key`` since its last success (restarts do not rebuild in a loop)."""
        try:
            data = json.loads(self._failure_path(key).read_text())
            return Failure(int(data["count"]), str(data["error"]), float(data["retry_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record_failure(self, key: PlanKey, error: str, now: float | None = None) -> float:
        """Remember a failed build; returns when the next may be tried (epoch seconds)."""
        now = time.time() if now is None else now
        previous = self.failure(key)
        count = 1 if previous is None else previous.count + 1
        retry_at = now + min(LAST_RETRY_S, FIRST_RETRY_S * 2.0 ** (count - 1))
        failure = {"count": count, "error": error, "retry_at": retry_at, "failed_at": now}
        write_atomic(self._failure_path(key), json.dumps(failure, indent=2).encode())
        return retry_at

    def clear_failure(self, key: PlanKey) -> None:
        self._failure_path(key).unlink(missing_ok=True)

    def discard(self, path: Path) -> None:
        """Remove a plan that does not load (and its sidecar)."""
        for victim in (path, path.with_suffix(".json")):
            victim.unlink(missing_ok=True)

    def entries(self) -> list[CachedPlan]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.plan")):
            try:
                meta = json.loads(path.with_suffix(".json").read_text())
            except (OSError, ValueError):
                meta = None
            out.append(CachedPlan(path, meta if isinstance(meta, dict) else None))
        return out

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive build lock (blocks while another process builds)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".build.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plan_status(entry: CachedPlan, target: Target | None, manifest: Manifest | None) -> tuple[bool, str]:
    """Whether a cached plan is usable here and now, and why not."""
    meta = entry.meta
    if meta is None:
        return False, "no readable sidecar (.json): unknown origin"
    built = meta.get("target") or {}
    if manifest is not None:
        spec = next((m for m in manifest.models if m.name == meta.get("model")), None)
        if spec is None:
            return False, f"model {meta.get('model')!r} is not in the manifest"
        if spec.sha256 != meta.get("onnx_sha256"):
            return False, f"built from another ONNX file ({str(meta.get('onnx_sha256'))[:12]}...)"
    if target is None:
        return False, "cannot check: no TensorRT GPU here"
    if built.get("tensorrt_version") != target.tensorrt_version:
        return False, f"built with TensorRT {built.get('tensorrt_version')}, this is {target.tensorrt_version}"
    if built.get("gpu_name") != target.gpu_name or tuple(built.get("compute_capability", ())) != tuple(
        target.compute_capability
    ):
        where = f"{built.get('gpu_name')} sm{built.get('compute_capability')}"
        return False, f"built for {where}, this is {target.gpu_name} sm{list(target.compute_capability)}"
    for field, what in (("device", "built on"), ("cuda_driver", "built with CUDA driver"), ("l4t", "built on L4T")):
        if built.get(field, "") != getattr(target, field):
            return False, f"{what} {built.get(field) or '?'}, this is {getattr(target, field) or '?'}"
    if meta.get("recipe") != RECIPE:
        return False, f"built by recipe {meta.get('recipe')}, the builder's is {RECIPE}"
    return True, "valid"
