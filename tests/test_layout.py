"""The two layers stay apart: runtimes run tensors and know nothing of what they mean (``gateway.models``) or of
what a photo shows (``gateway.backends``); progress reporting serves builds, training and evaluation alike."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_no_runtime_module_imports_the_models_or_the_assessors() -> None:
    modules = sorted((GATEWAY / "runtimes").glob("*.py"))
    assert {p.stem for p in modules} >= {"runtime", "onnxruntime", "tensorrt", "batching", "failover"}
    for path in modules:
        for name in imports(path):
            assert not name.startswith(("gateway.models", "gateway.backends")), f"runtimes/{path.name} imports {name}"


def test_the_runtimes_left_the_assessors_folder_and_progress_has_a_neutral_home() -> None:
    assert not any((GATEWAY / "backends" / f"{name}.py").exists() for name in ("onnxruntime", "tensorrt", "batching"))
    assert (GATEWAY / "progress.py").is_file() and not (GATEWAY / "engines" / "progress.py").exists()
    assert not {n for n in imports(GATEWAY / "progress.py") if n.startswith("gateway.")}
