"""bench/gpu_smoke.py's dry run (stand-in tensorrt/pycuda, the shipped models): it passes on a faithful runtime,
and its checks fail on one that ignores its input or swaps rows (the plans are built without the fault first, so
that it is the smoke checks, not the build's own reference check, that catch it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dry_run(cache: Path, faults: str = "", *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STANDIN_FAULTS": faults}
    command = [sys.executable, str(REPO / "bench" / "gpu_smoke.py"), "--dry-run", "--cache-dir", str(cache)]
    command += ["--batches", "2", "--cycles", "1", "--warmup", "1", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("smoke-cache")
    result = dry_run(cache, "", "--model", "cervix-detector")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL PASSED" in result.stdout
    for check in ("parity at batch 1 and 4", "own rows, 8 callers, direct", "own rows, 8 callers, through the batcher",
                  "a batch over the profile is refused", "run() after close() answers", "device memory over 2 batches",
                  "device memory over 1 open/close cycles"):  # fmt: skip
        assert f"PASS cervix-detector: {check}" in result.stdout
    return cache


def test_the_dry_run_passes_on_a_faithful_runtime(built: Path) -> None:
    assert any(built.glob("cervix-detector*.plan"))


def test_the_dry_run_fails_on_a_runtime_that_ignores_its_input(built: Path) -> None:
    result = dry_run(built, "ignore_input", "--model", "cervix-detector")
    assert result.returncode == 1
    assert "cervix-detector: up to date" in result.stdout  # the checks ran on the plan built without the fault
    assert "FAIL cervix-detector: parity at batch 1 and 4" in result.stdout
    assert "row 0 (batch 1): " in result.stdout


def test_the_dry_run_fails_on_a_runtime_that_swaps_rows(built: Path) -> None:
    result = dry_run(built, "swap_rows", "--model", "cervix-detector")
    assert result.returncode == 1
    assert "FAIL cervix-detector: parity at batch 1 and 4" in result.stdout
    assert "FAIL cervix-detector: own rows, 8 callers, through the batcher" in result.stdout
    assert "sent row" in result.stdout and "got the output of row" in result.stdout


def test_the_dry_run_checks_the_blur_type_output_of_a_focus_model(tmp_path: Path) -> None:
    """A focus model with a blur-type output: parity passes on a faithful runtime and fails on one that swaps the
    [defocus, motion] columns (the sharp probability untouched)."""
    from tests.onnx_models import detector_and_typed_classifier

    manifest = str(detector_and_typed_classifier(tmp_path / "models"))
    cache = tmp_path / "cache"
    result = dry_run(cache, "", "--manifest", manifest, "--model", "focus-classifier")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS focus-classifier: parity at batch 1 and 4" in result.stdout
    result = dry_run(cache, "swap_columns:blur_type", "--manifest", manifest, "--model", "focus-classifier")
    assert result.returncode == 1
    assert "focus-classifier: up to date" in result.stdout  # the checks ran on the plan built without the fault
    assert "FAIL focus-classifier: parity at batch 1 and 4" in result.stdout
    assert "row 0 (batch 1): motion probability 0.0474 flips the blur type at 0.5 (0.9526)" in result.stdout
