"""The stand-in ``tensorrt``/``pycuda`` (tests/standins) for one test: ``standin`` puts them on the path, for this
process and the child processes it starts, and takes them off again (with every module that imported them)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

STANDINS = Path(__file__).resolve().parent / "standins"
REPO = STANDINS.parents[1]
_IMPORTERS = ("tensorrt", "pycuda", "gateway.runtimes.tensorrt", "gateway.engines.build")


def _forget() -> None:
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in _IMPORTERS):
            del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and hasattr(sys.modules[parent], child):  # ``from package import child``
                delattr(sys.modules[parent], child)


@dataclass
class StandIn:
    monkeypatch: pytest.MonkeyPatch
    events_path: Path

    def set(self, faults: str = "", gpu: str | None = None, version: str | None = None) -> None:
        """Faults (comma-separated, see tests/standins), device and TensorRT version from now on."""
        self.monkeypatch.setenv("STANDIN_FAULTS", faults)
        if gpu is not None:
            self.monkeypatch.setenv("STANDIN_GPU", gpu)
        if version is not None:
            self.monkeypatch.setenv("STANDIN_TRT_VERSION", version)
            _forget()  # __version__ is read at import

    @property
    def cuda(self) -> ModuleType:
        import pycuda.driver

        return pycuda.driver

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.is_file():
            return []
        lines = [json.loads(line) for line in self.events_path.read_text().splitlines() if line]
        return [e for e in lines if kind is None or e["event"] == kind]


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    _forget()
    monkeypatch.syspath_prepend(str(STANDINS))
    path = os.pathsep.join(p for p in (str(STANDINS), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    events = tmp_path / "standin-events.jsonl"
    monkeypatch.setenv("STANDIN_EVENTS", str(events))
    monkeypatch.setenv("STANDIN_FAULTS", "")
    monkeypatch.setenv("STANDIN_GPU", "orin-nano")
    monkeypatch.delenv("STANDIN_TRT_VERSION", raising=False)
    yield StandIn(monkeypatch, events)
    _forget()
