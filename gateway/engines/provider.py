"""The TensorRT side of backend selection: is TensorRT usable here, which plans are cached, open them, build.

Builds at start run in a child process (``colpo-gateway engines build``): a crash of the builder cannot take the
gateway down, the gateway keeps serving through ONNX Runtime meanwhile, and a stop cancels the build. The child
runs at a lower priority and with ``oom_score_adj`` 1000, so that when memory runs out the kernel kills the build,
not the gateway.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import structlog

from gateway.backends.runtime import InferenceError, Runtime
from gateway.backends.settings import ModelsConfig
from gateway.engines.cache import EngineCache, PlanKey, Target
from gateway.models.manifest import ModelSpec

log = structlog.get_logger(__name__)


class BuildFailed(RuntimeError):
    pass


class TensorRTEngines:
    def __init__(self, config: ModelsConfig) -> None:
        self.config = config
        self.cache = EngineCache(config.cache_dir())
        self._process: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()

    def probe(self) -> tuple[Target | None, str]:
        """The build target here, or None and why TensorRT cannot run."""
        missing = [
            hint for module, hint in (
                ("tensorrt", "tensorrt is not installed (JetPack ships it: a venv with --system-site-packages)"),
                ("pycuda", "pycuda is not installed (pip install 'colposcopy-gateway[jetson]')"),
            )
            if importlib.util.find_spec(module) is None
        ]  # fmt: skip
        if missing:
            return None, "; ".join(missing)
        try:
            from gateway.backends import tensorrt as trt_backend
        except ImportError as exc:
            return None, f"TensorRT/pycuda do not import ({exc})"
        except Exception as exc:  # a broken CUDA install raises anything at import
            return None, f"TensorRT/pycuda fail to import ({type(exc).__name__}: {exc})"
        try:
            info = trt_backend.probe(self.config.gpu)
        except InferenceError as exc:
            return None, str(exc)
        target = Target(info.tensorrt_version, info.name, info.compute_capability)
        major, minor = info.compute_capability
        kind = ", integrated" if info.integrated else ""
        return target, f"TensorRT {info.tensorrt_version} on {info.name} (sm{major}{minor}{kind})"

    def key(self, spec: ModelSpec, target: Target) -> PlanKey:
        return PlanKey.of(spec, self.config.precision, self.config.max_batch, target)

    def cached_plan(self, spec: ModelSpec, target: Target) -> Path | None:
        return self.cache.find(self.key(spec, target))

    def open(self, plan: Path) -> Runtime:
        from gateway.backends.tensorrt import TensorRTRuntime

        return TensorRTRuntime(plan, self.config.gpu)

    def discard(self, plan: Path) -> None:
        log.warning("engine_discarded", plan=str(plan))
        self.cache.discard(plan)

    def build_command(self, manifest: Path, models: Sequence[str]) -> list[str]:
        c = self.config
        command = [
            sys.executable, "-m", "gateway", "engines", "build",
            "--manifest", str(manifest), "--cache-dir", str(self.cache.root), "--precision", c.precision,
            "--max-batch", str(c.max_batch), "--gpu", str(c.gpu), "--workspace-mb", str(c.workspace_mb),
        ]  # fmt: skip
        if c.calibration_dir is not None:
            command += ["--calibration", str(c.calibration_dir)]
        for name in models:
            command += ["--model", name]
        return command

    def build(self, manifest: Path, models: Sequence[str]) -> None:
        """Build plans in a child process (blocking); its output goes to this log; raise BuildFailed."""
        if self._cancelled.is_set():
            raise BuildFailed("cancelled")
        command = self.build_command(manifest, models)
        log.info("engine_build_started", models=list(models), command=" ".join(command))
        tail: deque[str] = deque(maxlen=5)
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        self._process = process
        _yield_to_the_gateway(process.pid)
        assert process.stdout is not None
        for line in process.stdout:
            sys.stderr.write(line)
            if line.strip():
                tail.append(line.strip())
        code = process.wait()
        self._process = None
        if self._cancelled.is_set():
            raise BuildFailed("cancelled")
        if code != 0:
            raise BuildFailed(f"colpo-gateway engines build exited with {code}: {tail[-1] if tail else 'no output'}")

    def cancel(self) -> None:
        self._cancelled.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _yield_to_the_gateway(pid: int) -> None:
    """The first victim of the OOM killer, and 10 nice steps below this process (best-effort: logged if refused)."""
    try:
        Path(f"/proc/{pid}/oom_score_adj").write_text("1000")
    except OSError as exc:
        log.warning("engine_build_oom_score_not_set", pid=pid, error=str(exc))
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10))
    except OSError as exc:
        log.warning("engine_build_priority_not_set", pid=pid, error=str(exc))
