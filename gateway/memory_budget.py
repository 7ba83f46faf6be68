"""The memory all workers together may spend on decoding at once: a shared budget of bytes.

Each photo reserves what its decode will take (:attr:`gateway.decode.DecodePlan.decoded_bytes`, known from the
header before any pixel is allocated) and holds it while it is judged; a photo that does not fit waits, up to
``wait_s``, for others to give theirs back. Whatever fits goes first: a small honest photo is never queued
behind a large one waiting for room.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["BudgetTimeout", "MemoryBudget"]


class BudgetTimeout(Exception):
    """The budget stayed too full for this photo for the whole wait."""


class MemoryBudget:
    def __init__(self, total_bytes: int, wait_s: float) -> None:
        if total_bytes <= 0 or wait_s < 0:
            raise ValueError("total_bytes must be positive and wait_s not negative")
        self.total_bytes = total_bytes
        self.wait_s = wait_s
        self._in_use = 0
        self._peak = 0
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use

    @property
    def peak(self) -> int:
        """The most bytes ever reserved at once."""
        with self._cond:
            return self._peak

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block. Raises :class:`BudgetTimeout` after ``wait_s``
        without room, and ``ValueError`` for more than the whole budget (it could never fit)."""
        if nbytes > self.total_bytes:
            raise ValueError(f"{nbytes} bytes is more than the whole budget of {self.total_bytes}")
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self._in_use + nbytes > self.total_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetTimeout(
                        f"{nbytes} bytes did not fit in {self.wait_s:g} s ({self._in_use} of {self.total_bytes} in use)"
                    )
                self._cond.wait(left)
            self._in_use += nbytes
            self._peak = max(self._peak, self._in_use)
        try:
            yield
        finally:
            with self._cond:
                self._in_use -= nbytes
                self._cond.notify_all()
