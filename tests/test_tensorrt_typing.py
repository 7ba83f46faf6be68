"""The TensorRT code type-checks (mypy --strict, the project's config) against TensorRT's published stubs.

The stubs come from PyPI (``tensorrt-stubs``), patched to parse by tools/typing/tensorrt_stubs.py into
.venv/tensorrt-stubs (scripts/bootstrap.sh does it); pycuda's minimal stubs are in tools/typing/stubs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUBS = REPO / ".venv" / "tensorrt-stubs"
TENSORRT_CODE = ["gateway/runtimes/tensorrt.py", "gateway/engines/build.py"]

pytestmark = pytest.mark.skipif(
    not (STUBS / "tensorrt" / "__init__.pyi").is_file(),
    reason="TensorRT stubs not fetched: run scripts/bootstrap.sh (or python tools/typing/tensorrt_stubs.py)",
)


def mypy(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *paths], capture_output=True, text=True, cwd=REPO
    )


def test_the_tensorrt_code_passes_mypy_strict_against_the_stubs() -> None:
    result = mypy(*TENSORRT_CODE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success")


def test_the_stubs_are_really_used(tmp_path: Path) -> None:
    """A misuse of the TensorRT API is caught: the types come from the stubs, not Any."""
    probe = tmp_path / "typing_probe.py"
    probe.write_text(
        "import tensorrt as trt\n\n\n"
        "def f(engine: trt.ICudaEngine) -> str:\n"
        "    return engine.num_io_tensors\n\n\n"
        "def g(context: trt.IExecutionContext) -> bool:\n"
        "    return context.execute_async_v3('stream')\n"
    )
    result = mypy("--config-file", str(REPO / "pyproject.toml"), str(probe))
    assert 'Incompatible return value type (got "int", expected "str")' in result.stdout, result.stdout
    assert 'Argument 1 to "execute_async_v3" of "IExecutionContext" has incompatible type "str"' in result.stdout
