"""Runtimes that close and never hang: a closed runtime answers with InferenceError, a replaced backend closes once
its photos are done, the service closes its runtimes on stop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.backends.base import Backend
from gateway.backends.select import classical_backend
from gateway.backends.slot import BackendSlot
from gateway.config import parse_config
from gateway.judge import build_judge
from gateway.runtimes.batching import BatchingRuntime
from gateway.runtimes.onnxruntime import OnnxRuntime
from gateway.runtimes.runtime import InferenceError
from gateway.service import GatewayService
from tests.conftest import Broker, Recorder
from tests.onnx_models import detector_and_classifier

CROPS = np.zeros((1, 3, 16, 16), dtype=np.float32)


def in_thread(action: Any, timeout: float = 30.0) -> BaseException | object:
    """Run ``action`` on a daemon thread; its result or exception, or fail when it does not return in time."""
    box: list[BaseException | object] = []

    def target() -> None:
        try:
            box.append(action())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout} s"
    return box[0]


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    detector_and_classifier(tmp_path)
    return tmp_path / "classifier.onnx"


def test_a_closed_onnxruntime_answers_inference_error(classifier: Path) -> None:
    runtime = OnnxRuntime(classifier)
    assert runtime.run({"crops": CROPS})["logits"].shape == (1, 2)
    runtime.close()
    with pytest.raises(InferenceError, match=r"classifier\.onnx: the runtime is closed"):
        runtime.run({"crops": CROPS})


def test_the_batcher_after_close_answers_and_closes_what_it_wraps(classifier: Path) -> None:
    inner = OnnxRuntime(classifier)
    batcher = BatchingRuntime(inner, max_batch=4)
    assert batcher.run({"crops": CROPS})["logits"].shape == (1, 2)
    batcher.close()
    for rows in (1, 4):  # through the dispatcher, and straight through (a full batch)
        error = in_thread(lambda rows=rows: batcher.run({"crops": np.zeros((rows, 3, 16, 16), np.float32)}))
        assert isinstance(error, InferenceError) and "the runtime is closed" in str(error)
    with pytest.raises(InferenceError, match="the runtime is closed"):
        inner.run({"crops": CROPS})
    batcher.close()  # twice: nothing


def test_a_batcher_caller_racing_close_is_answered(classifier: Path) -> None:
    for _ in range(20):
        batcher = BatchingRuntime(OnnxRuntime(classifier), max_batch=4)
        results: list[object] = []

        def call(batcher: BatchingRuntime = batcher, results: list[object] = results) -> None:
            results.append(in_thread(lambda: batcher.run({"crops": CROPS})))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        batcher.close()
        for t in threads:
            t.join(60)
        assert len(results) == 8
        assert all(isinstance(r, dict | InferenceError) for r in results), results


class Recording:
    """A runtime that records ``close`` (the backend's runtimes are what the slot must close)."""

    engine = "onnxruntime"
    inputs = outputs = ()

    def __init__(self) -> None:
        self.closed = threading.Event()

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        return {}

    def close(self) -> None:
        self.closed.set()


def backend_with(runtime: Recording, name: str = "onnxruntime") -> Backend:
    classical = classical_backend(parse_config(""))
    return Backend(name, {}, classical.detector, classical.focus, runtimes=(runtime,))


def test_a_replaced_backend_closes_once_its_photos_are_done() -> None:
    old, new = Recording(), Recording()
    slot = BackendSlot(backend_with(old), "start")
    held = slot.acquire()  # a photo being judged on the old backend
    swapping = threading.Thread(target=slot.swap, args=(backend_with(new, "tensorrt"), "engines built"))
    swapping.start()
    assert not old.closed.wait(0.5), "closed while a photo still used it"
    assert slot.current.name == "tensorrt"
    slot.release(held)
    assert old.closed.wait(10)
    swapping.join(10)
    assert not new.closed.is_set()
    slot.close()
    assert new.closed.is_set()


def test_the_wait_for_photos_is_bounded() -> None:
    old = Recording()
    slot = BackendSlot(backend_with(old), "start", retire_wait_s=0.2)
    slot.acquire()  # never released
    in_thread(lambda: slot.swap(backend_with(Recording(), "tensorrt"), "engines built"))
    assert old.closed.is_set()


def test_the_service_closes_its_runtimes_on_stop(broker: Broker, recorder: Recorder, tmp_path: Path) -> None:
    manifest = detector_and_classifier(tmp_path / "models")
    settings = {
        "gateway_id": "gw-test",
        "backend": "onnxruntime",
        "broker": {"url": broker.url},
        "models": {"manifest": str(manifest)},
    }
    config = parse_config("", "<test>", settings)
    judge = build_judge(config)
    runtimes = judge.pipeline.slot.current.runtimes
    assert len(runtimes) == 2
    service = GatewayService(config, judge)
    service.start()
    assert service.connected.wait(10)
    service.stop()
    for runtime in runtimes:
        with pytest.raises(InferenceError, match="the runtime is closed"):
            runtime.run({"crops": CROPS, "images": np.zeros((1, 3, 32, 32), np.float32)})
