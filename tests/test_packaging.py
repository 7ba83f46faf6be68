"""The package metadata builds without setuptools warnings: the license is an SPDX expression (setuptools >= 77)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_metadata_has_an_spdx_license_expression_and_builds_without_warnings(tmp_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first to take an SPDX expression
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__init__.py").touch()
    (tmp_path / "gateway" / "py.typed").touch()
    build = "from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel('.'))"
    done = subprocess.run(
        [sys.executable, "-c", build], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    assert "Warning" not in done.stderr, done.stderr
    [metadata] = tmp_path.glob("*.dist-info/METADATA")
    headers = metadata.read_text().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert not any(h.startswith("License:") for h in headers)  # the deprecated free-text field is gone
