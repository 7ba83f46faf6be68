"""The gateway's work queue, shared fairly between devices.

Photos wait per device and are taken round-robin (one device's turn, then the next device's), so a device with
many photos waiting delays another device's photo by at most one judgement per device. The queue holds at most
``capacity`` photos. When it is full, a device's fair share is ``capacity // devices waiting`` (at least 1): a
photo from a device holding less than its share takes the place of the newest photo of the device holding the
most, when that device holds more than the newcomer would; otherwise the photo is refused. ``admit`` returns the
photos refused or pushed out (the caller answers them ``busy`` at once), so a flooding device never keeps the
queue, nor the MQTT receive window the photos are unacknowledged in, from the other devices.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Bounded, per-key round-robin queue; ``put(None)`` queues a stop marker taken after every waiting item."""

    def __init__(self, capacity: int, key: Callable[[T], Hashable]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._key = key
        self._waiting: OrderedDict[Hashable, deque[T]] = OrderedDict()
        """Each key's waiting items, oldest first; keys in turn order (the next to serve first)."""
        self._size = 0
        self._stops = 0
        self._cond = threading.Condition()

    def admit(self, item: T) -> list[T]:
        """Queue ``item`` if there is room or it is within its key's fair share; return what was refused:
        ``[item]``, ``[]``, or ``[pushed_out]`` (another key's newest item, when ``item`` took its place)."""
        key = self._key(item)
        with self._cond:
            refused: list[T] = []
            if self._size >= self._capacity:
                mine = len(self._waiting.get(key, ()))
                devices = len(self._waiting) + (key not in self._waiting)
                share = max(1, self._capacity // devices)
                victim = max(self._waiting, key=lambda k: len(self._waiting[k]))
                if mine >= share or len(self._waiting[victim]) <= mine + 1:
                    return [item]
                refused.append(self._waiting[victim].pop())
                self._size -= 1
            self._waiting.setdefault(key, deque()).append(item)
            self._size += 1
            self._cond.notify()
            return refused

    def put(self, item: None) -> None:
        """A stop marker: one ``get`` returns None once the items waiting have been taken."""
        with self._cond:
            self._stops += 1
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item in turn (None: a stop marker); raises ``queue.Empty`` after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._size or self._stops, timeout):
                raise queue.Empty
            return self._take()

    def get_nowait(self) -> T | None:
        with self._cond:
            if not (self._size or self._stops):
                raise queue.Empty
            return self._take()

    def qsize(self) -> int:
        with self._cond:
            return self._size

    def _take(self) -> T | None:
        if not self._size:
            self._stops -= 1
            return None
        key, items = next(iter(self._waiting.items()))
        item = items.popleft()
        self._size -= 1
        if items:
            self._waiting.move_to_end(key)
        else:
            del self._waiting[key]
        return item
