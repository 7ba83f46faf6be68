"""Dynamic batching on a real ONNX Runtime session: concurrent single-photo calls run together and each caller
gets exactly its own rows back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from gateway.runtimes.batching import BatchingRuntime, batched
from gateway.runtimes.onnxruntime import OnnxRuntime
from gateway.runtimes.runtime import InferenceError
from tests.onnx_models import conv_classifier, typed_classifier

T = TypeVar("T")


@pytest.fixture
def session(tmp_path: Path) -> OnnxRuntime:
    return OnnxRuntime(conv_classifier(tmp_path / "conv.onnx", 16, seed=3))


def crops(seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (rows, 3, 16, 16)).astype(np.float32)


def at_once(count: int, call: Callable[[int], T], timeout: float = 30) -> dict[int, T]:
    """``call(n)`` for n in 0..count-1 from as many threads released together; the answers by n."""
    got: dict[int, T] = {}
    start = threading.Barrier(count)

    def caller(n: int) -> None:
        start.wait()
        got[n] = call(n)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return got


def test_concurrent_calls_are_batched_and_each_gets_its_own_rows(session: OnnxRuntime) -> None:
    sizes: list[int] = []
    runtime = BatchingRuntime(session, max_batch=4, max_wait_ms=50, on_batch=sizes.append)
    expected = {n: session.run({"crops": crops(n)})["logits"] for n in range(8)}
    got = at_once(8, lambda n: runtime.run({"crops": crops(n)})["logits"])
    runtime.close()
    assert sorted(got) == list(range(8))
    for n in range(8):
        assert got[n].shape == (1, 2)
        np.testing.assert_allclose(got[n], expected[n], rtol=1e-5, atol=1e-6)
    assert sum(sizes) == 8 and max(sizes) <= 4 and len(sizes) < 8  # some calls ran together


def test_a_lone_call_does_not_wait_with_max_wait_0(session: OnnxRuntime) -> None:
    sizes: list[int] = []
    runtime = BatchingRuntime(session, max_batch=4, max_wait_ms=0, on_batch=sizes.append)
    out = runtime.run({"crops": crops(1)})["logits"]
    np.testing.assert_allclose(out, session.run({"crops": crops(1)})["logits"], rtol=1e-5, atol=1e-6)
    assert sizes == [1]
    runtime.close()


def test_calls_of_several_rows_never_exceed_max_batch(session: OnnxRuntime) -> None:
    sizes: list[int] = []
    runtime = BatchingRuntime(session, max_batch=4, max_wait_ms=30, on_batch=sizes.append)
    results: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, runtime.run({"crops": crops(n, 3)})["logits"]))
        for n in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(sizes) == [3, 3, 3]  # 3 + 3 > 4: each waits for the next batch
    for n, logits in results.items():
        np.testing.assert_allclose(logits, session.run({"crops": crops(n, 3)})["logits"], rtol=1e-5, atol=1e-6)
    runtime.close()  # closes the session too


def test_a_failing_batch_raises_in_every_caller_and_the_batcher_goes_on(session: OnnxRuntime) -> None:
    runtime = BatchingRuntime(session, max_batch=4)
    with pytest.raises(InferenceError):
        runtime.run({"crops": np.zeros((1, 3, 8, 8), np.float32)})  # wrong size
    assert runtime.run({"crops": crops(2)})["logits"].shape == (1, 2)
    runtime.close()


def test_only_dynamic_batch_models_are_wrapped(session: OnnxRuntime) -> None:
    wrapped = batched(session, 4, 0)
    assert isinstance(wrapped, BatchingRuntime)
    wrapped.close()
    assert batched(session, 1, 0) is session


def test_the_batcher_splits_every_output_per_row(tmp_path: Path) -> None:
    """A focus model with a blur-type output: each caller gets its own rows of both outputs."""
    session = OnnxRuntime(typed_classifier(tmp_path / "typed.onnx", 16, 0.5, -1.0, gain=2.0, motion_gain=-3.0))
    runtime = BatchingRuntime(session, max_batch=4, max_wait_ms=50)
    expected = {n: session.run({"crops": crops(n)}) for n in range(8)}
    got = at_once(8, lambda n: runtime.run({"crops": crops(n)}))
    runtime.close()
    assert sorted(got) == list(range(8))
    for n in range(8):
        assert sorted(got[n]) == ["blur_type", "logits"]
        for name in ("logits", "blur_type"):
            assert got[n][name].shape == (1, 2)
            np.testing.assert_allclose(got[n][name], expected[n][name], rtol=1e-5, atol=1e-6)


def test_concurrent_photos_through_the_batcher_get_their_own_blur_type(tmp_path: Path) -> None:
    """The focus judge on a batched runtime: dark photos come back defocus, bright ones motion, each its own."""
    from gateway.backends.neural import ClassifierFocus
    from gateway.models.manifest import load_manifest
    from tests.onnx_models import typed_entry, write_manifest

    typed = typed_classifier(tmp_path / "typed.onnx", 16, -3.0, 0.0, motion_gain=4.0)  # motion when the crop is bright
    manifest = load_manifest(write_manifest(tmp_path, [typed_entry(typed)]))
    spec = manifest.models[0]
    sizes: list[int] = []
    judge = ClassifierFocus(spec, BatchingRuntime(OnnxRuntime(manifest.onnx_path(spec)), 4, 200, sizes.append))
    levels = [30, 230, 40, 220, 20, 240, 50, 210]
    got = at_once(len(levels), lambda n: judge.judge(np.full((60, 80, 3), levels[n], dtype=np.uint8), None).blur_type)
    judge.runtime.close()
    assert got == {n: "motion" if level > 128 else "defocus" for n, level in enumerate(levels)}
    assert sum(sizes) == len(levels) and len(sizes) < len(levels)  # some photos ran together
