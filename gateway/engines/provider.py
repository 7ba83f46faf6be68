"""The TensorRT side of backend selection: is TensorRT usable here, which plans are cached, open them, build.

Builds at start run in a child process (``colpo-gateway engines build``): a crash of the builder cannot take the
gateway down, the gateway keeps serving through ONNX Runtime meanwhile, and a stop or ``models.build_timeout_s``
cancels the build (SIGINT: TensorRT stops at its next step and the timing cache is kept; then SIGTERM). The child
runs at a lower priority and with ``oom_score_adj`` 1000, so that when memory runs out the kernel kills the build,
not the gateway.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import structlog

from gateway.backends.settings import ModelsConfig
from gateway.engines.cache import EngineCache, PlanKey, Target
from gateway.models.manifest import ModelSpec
from gateway.runtimes.runtime import InferenceError, Runtime

log = structlog.get_logger(__name__)


class BuildFailed(RuntimeError):
    pass


class TensorRTEngines:
    def __init__(self, config: ModelsConfig) -> None:
        self.config = config
        self.cache = EngineCache(config.cache_dir())
        self._process: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()
        self.interrupt_wait_s = 60.0
        """How long a build stopped at its time limit may take to stop after SIGINT, before SIGTERM."""
        self.cancel_wait_s = 5.0
        """The same when the gateway stops (``cancel``): the unit's TimeoutStopSec (30 s) also covers the photos'
        grace, so the timing cache gets a few seconds and the build is then terminated."""

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
            from gateway.runtimes import tensorrt as trt_backend
        except ImportError as exc:
            return None, f"TensorRT/pycuda do not import ({exc})"
        except Exception as exc:  # a broken CUDA install raises anything at import
            return None, f"TensorRT/pycuda fail to import ({type(exc).__name__}: {exc})"
        try:
            info = trt_backend.probe(self.config.gpu)
        except InferenceError as exc:
            return None, str(exc)
        target = Target(
            info.tensorrt_version, info.name, info.compute_capability, info.device(), info.cuda_driver, info.l4t
        )
        major, minor = info.compute_capability
        kind = ", integrated" if info.integrated else ""
        return target, f"TensorRT {info.tensorrt_version} on {info.name} (sm{major}{minor}{kind})"

    def key(self, spec: ModelSpec, target: Target) -> PlanKey:
        return self.cache.key(spec, self.config.precision, self.config.max_batch, target)

    def cached_plan(self, spec: ModelSpec, target: Target) -> Path | None:
        return self.cache.find(self.key(spec, target))

    def open(self, plan: Path) -> Runtime:
        from gateway.runtimes.tensorrt import TensorRTRuntime

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
        limit = self.config.build_timeout_s
        timed_out = threading.Event()

        def time_out() -> None:
            timed_out.set()
            self._stop(process, self.interrupt_wait_s)

        timer = threading.Timer(limit, time_out)
        timer.daemon = True
        timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stderr.write(line)
                if line.strip():
                    tail.append(line.strip())
            code = process.wait()
        finally:
            timer.cancel()
            self._process = None
        if self._cancelled.is_set():
            raise BuildFailed("cancelled")
        if timed_out.is_set():
            raise BuildFailed(f"no result within {limit:.0f} s (models.build_timeout_s): stopped")
        if code != 0:
            raise BuildFailed(f"colpo-gateway engines build exited with {code}: {tail[-1] if tail else 'no output'}")

    def cancel(self) -> None:
        self._cancelled.set()
        process = self._process
        if process is not None:
            self._stop(process, self.cancel_wait_s)

    def _stop(self, process: subprocess.Popen[str], interrupt_wait_s: float) -> None:
        """SIGINT first (the builder stops at its next step and saves its timing cache), then SIGTERM, then SIGKILL."""
        for sig, wait_s in ((signal.SIGINT, interrupt_wait_s), (signal.SIGTERM, min(10.0, interrupt_wait_s))):
            if process.poll() is not None:
                return
            process.send_signal(sig)
            try:
                process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                log.warning("engine_build_did_not_stop", signal=sig.name, waited_s=wait_s)
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
