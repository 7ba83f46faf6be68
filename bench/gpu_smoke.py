"""GPU smoke test of the TensorRT path on the shipped models: checks that can fail, on the real GPU.

    python bench/gpu_smoke.py [--manifest engines/manifest.yaml] [--cache-dir DIR] [--model NAME] [--dry-run]

Builds the plans first when they are missing (``engines build``: not counted in the checks' time), then, per model:

* parity: the reference inputs shipped beside each ONNX file, at batch 1 and 4, against their FP32 outputs
  (within 0.02, no verdict flip, and for a focus model with a ``blur_type_logits`` output no blur-type flip:
  ``gateway.engines.reference``);
* own rows: 8 threads call at once with different inputs, directly and through the batcher; each must get the
  outputs (all of them) of its own input (the nearest of the rows run one by one);
* limits: a batch over the profile's maximum is refused, and ``run()`` after ``close()`` answers InferenceError;
* memory: free device memory may drop by less than 16 MiB after warm-up, over 300 batches and over 10 open/close
  cycles.

Prints PASS/FAIL per check and exits 1 on any failure. ``--dry-run`` runs the same checks on the stand-in
``tensorrt``/``pycuda`` of tests/standins (plans that ONNX Runtime runs on the CPU), in a temporary cache: CI runs
it that way (tests/test_gpu_smoke.py), and it fails on a runtime that ignores its input or swaps rows
(``STANDIN_FAULTS=ignore_input`` or ``swap_rows``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROWTH_LIMIT = 16 << 20
THREADS = 8


def _use_standins() -> None:
    """The dry run: stand-in tensorrt/pycuda first on the path (before anything imports them)."""
    standins = str(REPO / "tests" / "standins")
    sys.path.insert(0, standins)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (standins, str(REPO), os.environ.get("PYTHONPATH")) if p)


class Smoke:
    def __init__(self, batches: int, cycles: int, warmup: int) -> None:
        self.batches, self.cycles, self.warmup = batches, cycles, warmup
        self.failures: list[str] = []

    def check(self, name: str, action: Callable[[], list[str]]) -> None:
        started = time.monotonic()
        try:
            problems = action()
        except Exception as exc:
            problems = [f"{type(exc).__name__}: {exc}"]
        took = time.monotonic() - started
        print(f"{'PASS' if not problems else 'FAIL'} {name} ({took:.1f} s)")
        for problem in problems:
            print(f"    {problem}")
        self.failures += [f"{name}: {p}" for p in problems]


def own_rows(runtime: Any, feeds: list[dict[str, np.ndarray]], alone: list[dict[str, np.ndarray]]) -> list[str]:
    """THREADS callers at once, each with its own row (cycling over the reference rows), 3 calls each."""
    flat = [np.concatenate([v.ravel() for _, v in sorted(out.items())]) for out in alone]
    problems: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def caller(index: int) -> None:
        row = index % len(feeds)
        try:
            barrier.wait(60)
            for _ in range(3):
                out = runtime.run(feeds[row])
                got = np.concatenate([v.ravel() for _, v in sorted(out.items())])
                nearest = int(np.argmin([np.abs(got - f).max() for f in flat]))
                if nearest != row and not np.allclose(flat[nearest], flat[row]):
                    with lock:
                        problems.append(f"caller {index} sent row {row} and got the output of row {nearest}")
        except Exception as exc:  # a failed call is a failed check, not a thread that quietly ends
            with lock:
                problems.append(f"caller {index} failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if any(t.is_alive() for t in threads):
        problems.append("a caller got no answer within 120 s")
    return problems


def model_checks(smoke: Smoke, manifest: Any, spec: Any, plan: Path, max_batch: int) -> None:
    from gateway.engines.reference import check, load_reference
    from gateway.runtimes.batching import BatchingRuntime
    from gateway.runtimes.runtime import InferenceError
    from gateway.runtimes.tensorrt import TensorRTRuntime

    reference = load_reference(manifest, spec)
    if reference is None:
        smoke.check(f"{spec.name}: reference", lambda: ["no reference outputs shipped beside the ONNX file"])
        return
    runtime = TensorRTRuntime(plan)
    observer = TensorRTRuntime(plan)  # reads free memory while the others open and close
    try:
        rows = len(reference.images)
        feeds = [reference.feeds(spec, [row]) for row in range(rows)]
        parity = f"{spec.name}: parity at batch 1 and {max_batch}"
        smoke.check(parity, lambda: check(spec, reference, runtime, max_batch))
        alone = [runtime.run(feed) for feed in feeds]
        smoke.check(f"{spec.name}: own rows, {THREADS} callers, direct", lambda: own_rows(runtime, feeds, alone))

        def batched() -> list[str]:
            batcher = BatchingRuntime(TensorRTRuntime(plan), max_batch)
            try:
                return own_rows(batcher, feeds, alone)
            finally:
                batcher.close()

        smoke.check(f"{spec.name}: own rows, {THREADS} callers, through the batcher", batched)

        def over_the_profile() -> list[str]:
            try:
                runtime.run(reference.feeds(spec, [i % rows for i in range(max_batch + 1)]))
            except InferenceError:
                return []
            return [f"a batch of {max_batch + 1} was accepted (profile maximum {max_batch})"]

        smoke.check(f"{spec.name}: a batch over the profile is refused", over_the_profile)

        def after_close() -> list[str]:
            closed = TensorRTRuntime(plan)
            closed.close()
            answer: list[object] = []
            caller = threading.Thread(target=lambda: answer.append(_outcome(closed.run, feeds[0])), daemon=True)
            caller.start()
            caller.join(30)
            if not answer:
                return ["run() after close() did not answer within 30 s"]
            return [] if isinstance(answer[0], InferenceError) else [f"run() after close() gave {answer[0]!r}"]

        smoke.check(f"{spec.name}: run() after close() answers", after_close)
        full = reference.feeds(spec, [i % rows for i in range(max_batch)])

        def steady() -> list[str]:
            for _ in range(smoke.warmup):
                runtime.run(full)
            before, _ = observer.memory()
            for _ in range(smoke.batches):
                runtime.run(full)
            after, _ = observer.memory()
            return _growth(before - after, f"over {smoke.batches} batches of {max_batch}")

        smoke.check(f"{spec.name}: device memory over {smoke.batches} batches", steady)

        def cycles() -> list[str]:
            TensorRTRuntime(plan).close()  # warm-up
            before, _ = observer.memory()
            for _ in range(smoke.cycles):
                cycled = TensorRTRuntime(plan)
                cycled.run(full)
                cycled.close()
            after, _ = observer.memory()
            return _growth(before - after, f"over {smoke.cycles} open/close cycles")

        smoke.check(f"{spec.name}: device memory over {smoke.cycles} open/close cycles", cycles)
    finally:
        runtime.close()
        observer.close()


def _outcome(action: Callable[[Any], object], argument: Any) -> object:
    try:
        return action(argument)
    except Exception as exc:
        return exc


def _growth(grown: int, how: str) -> list[str]:
    if grown >= GROWTH_LIMIT:
        return [f"free device memory fell by {grown / 2**20:.1f} MiB {how} (limit {GROWTH_LIMIT >> 20} MiB)"]
    print(f"    free device memory fell by {grown / 2**20:.2f} MiB {how}")
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=REPO / "engines" / "manifest.yaml")
    parser.add_argument("--cache-dir", type=Path, help="engine cache (default: the gateway's; a temporary one dry)")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="batches run before memory is measured")
    parser.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="stand-in tensorrt/pycuda (tests/standins), no GPU")
    args = parser.parse_args(argv)
    if args.dry_run:
        _use_standins()
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as scratch:
        return _run(args, Path(scratch) if args.dry_run and args.cache_dir is None else args.cache_dir)


def _run(args: argparse.Namespace, cache_dir: Path | None) -> int:
    from gateway.config import parse_config
    from gateway.engines.command import build
    from gateway.engines.provider import TensorRTEngines
    from gateway.models.manifest import load_manifest

    models: dict[str, Any] = {"manifest": str(args.manifest), "max_batch": args.max_batch}
    if cache_dir is not None:
        models["engine_cache_dir"] = str(cache_dir)
    config = parse_config("", "<gpu_smoke>", {"models": models})
    engines = TensorRTEngines(config.models)
    target, why = engines.probe()
    if target is None:
        print(f"FAIL no TensorRT GPU here: {why}")
        return 1
    print(f"{why}{' (stand-ins: dry run)' if args.dry_run else ''}; cache {engines.cache.root}")
    if build(config, args.model, False) != 0:
        print("FAIL engines build (see above)")
        return 1
    started = time.monotonic()
    manifest = load_manifest(args.manifest)
    smoke = Smoke(args.batches, args.cycles, args.warmup)
    for spec in manifest.models:
        if args.model and spec.name not in args.model:
            continue
        plan = engines.cached_plan(spec, target)
        assert plan is not None
        model_checks(smoke, manifest, spec, plan, args.max_batch)
    print(f"checks took {time.monotonic() - started:.0f} s (the build not counted)")
    print("ALL PASSED" if not smoke.failures else f"{len(smoke.failures)} FAILED")
    return 1 if smoke.failures else 0


if __name__ == "__main__":
    sys.exit(main())
