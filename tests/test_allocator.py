"""The glibc malloc tuning the service applies at start (its effect on memory is measured by the benchmark)."""

from __future__ import annotations

import platform

import pytest

from gateway.allocator import tune_for_large_buffers


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_settings() -> None:
    assert tune_for_large_buffers() is True
