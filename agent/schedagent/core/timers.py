"""Keys that fall due at a time: schedule, cancel and take the due ones in O(log n)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Timers(Generic[K]):
    """At most one time per key; rescheduling a key replaces its time.

    A heap with lazy deletion: a cancelled or replaced entry stays in the heap until it
    comes to the top (or the heap is compacted), so every operation is O(log n).
    """

    def __init__(self) -> None:
        self.at: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()  # ties never compare keys

    def __contains__(self, key: K) -> bool:
        return key in self.at

    def __len__(self) -> int:
        return len(self.at)

    def schedule(self, key: K, at: float) -> None:
        self.at[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))
        if len(self._heap) > 2 * len(self.at) + 64:
            self._heap = [entry for entry in self._heap if self._current(entry)]
            heapq.heapify(self._heap)

    def cancel(self, key: K) -> None:
        self.at.pop(key, None)

    def due(self, now: float) -> list[K]:
        """The keys whose time is at or before now, earliest first; they are unscheduled."""
        found = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if self._current(entry):
                del self.at[entry[2]]
                found.append(entry[2])
        return found

    def next_at(self) -> float | None:
        """The earliest scheduled time, or None when nothing is scheduled."""
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _current(self, entry: tuple[float, int, K]) -> bool:
        at, _, key = entry
        return self.at.get(key) == at
