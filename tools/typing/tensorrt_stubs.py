"""Fetch TensorRT's published type stubs (the ``tensorrt-stubs`` package) and patch them so mypy parses them.

    python tools/typing/tensorrt_stubs.py [TARGET]     (default TARGET: .venv/tensorrt-stubs)

The stubs are installed with ``pip --no-deps --target`` into a folder of their own, never into site-packages:
they declare a dependency on TensorRT's real bindings (which cannot be installed without a GPU), and a
``tensorrt`` folder of stubs on sys.path would make ``import tensorrt`` succeed at run time. mypy finds them
through ``mypy_path`` in pyproject.toml. Safe to run again: it does nothing once the patched stubs are there.

The generated stubs do not parse as published: parameters named ``in`` (a keyword), a parameter without a
default after ones with defaults, and an import of ``tensorrt_libs`` (a runtime-only package). Each patch is
an exact text substitution that must match, so a new stubs version that no longer needs one fails loudly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

VERSION = "10.13.0.35.1"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_TARGET = REPO / ".venv" / "tensorrt-stubs"
MARKER = f".patched-{VERSION}"

# (file, pattern, replacement, expected minimum number of substitutions)
PATCHES: list[tuple[str, str, str, int]] = [
    ("tensorrt_bindings/tensorrt.pyi", r"\bin: ", "in_: ", 4),
    (
        "tensorrt_bindings/tensorrt.pyi",
        re.escape("power: Weights = None, channel_axis: int)"),
        "power: Weights = None, channel_axis: int = ...)",
        1,
    ),
    ("tensorrt/__init__.pyi", r"^import tensorrt_libs as tensorrt_libs\n", "", 1),
    ("tensorrt_bindings/__init__.pyi", r"^import tensorrt_libs as tensorrt_libs\n", "", 0),
]


def install(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--upgrade",
            "--target",
            str(target),
            f"tensorrt-stubs=={VERSION}",
        ],
        check=True,
    )


def patch(target: Path) -> None:
    for name, pattern, replacement, expected in PATCHES:
        path = target / name
        text, count = re.subn(pattern, replacement, path.read_text(), flags=re.MULTILINE)
        if count < expected:
            raise SystemExit(f"{path}: patch {pattern!r} matched {count} times, expected at least {expected}")
        path.write_text(text)


def ensure(target: Path = DEFAULT_TARGET) -> Path:
    if (target / MARKER).exists():
        return target
    install(target)
    patch(target)
    (target / MARKER).write_text(f"tensorrt-stubs {VERSION}, patched by {Path(__file__).name}\n")
    return target


if __name__ == "__main__":
    where = ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET)
    print(f"tensorrt stubs ready in {where}")
