"""The pending queue: jobs in submit order, grouped by what placement looks at (pure)."""

from __future__ import annotations

import heapq
import itertools
from typing import NamedTuple

from schedagent.core.model import JobSpec
from schedagent.core.placement import EPSILON, NodeView


class Shape(NamedTuple):
    """What placement reads of a job; jobs of one shape are interchangeable for it.

    A tuple, not a dataclass: it is made and hashed for every job change.
    """

    cpus: float
    node: str | None
    labels: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, spec: JobSpec) -> Shape:
        return cls(spec.cpus, spec.node, tuple(sorted(spec.labels.items())))

    def could_fit(self, node: NodeView, free: float) -> bool:
        """Whether a job of this shape fits on the node as it stands."""
        if self.node is not None and self.node != node.name:
            return False
        if free + EPSILON < self.cpus:
            return False
        return all(node.labels.get(k) == v for k, v in self.labels)


HeadEntry = tuple[str, int, str, Shape]  # (job id, tie-break, key, shape)


class PendingQueue:
    """Placeable jobs by job id (submit order), one heap per shape.

    When a shape's oldest job finds no node, no job of that shape can find one until
    capacity grows: the shape is blocked, and placement no longer looks at its jobs.
    unblock(node, free) wakes the blocked shapes that could fit on a node that just
    gained room. A heap over the heads of the unblocked shapes gives the oldest job
    overall. Removals are lazy: an entry is dropped when it reaches the top.
    """

    def __init__(self) -> None:
        self.members: dict[str, tuple[str, Shape]] = {}  # key -> (job id, shape)
        self._shapes: dict[Shape, list[tuple[str, str]]] = {}  # shape -> heap of (id, key)
        self._counts: dict[Shape, int] = {}
        self._heads: list[HeadEntry] = []
        self._order = itertools.count()
        self.blocked: set[Shape] = set()

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, key: str) -> bool:
        return key in self.members

    def add(self, key: str, job_id: str, shape: Shape) -> None:
        self.remove(key)
        self.members[key] = (job_id, shape)
        heapq.heappush(self._shapes.setdefault(shape, []), (job_id, key))
        self._counts[shape] = self._counts.get(shape, 0) + 1
        if self._head(shape) == (job_id, key):
            self._head_moved(shape)

    def remove(self, key: str) -> None:
        member = self.members.get(key)
        if member is None:
            return
        job_id, shape = member
        was_head = self._head(shape) == (job_id, key)
        del self.members[key]
        self._counts[shape] -= 1
        if self._counts[shape] == 0:
            del self._shapes[shape], self._counts[shape]
            self.blocked.discard(shape)
            return
        heap = self._shapes[shape]
        if was_head:
            self._head_moved(shape)
        elif len(heap) > 2 * self._counts[shape] + 64:
            self._shapes[shape] = [e for e in heap if self.members.get(e[1]) == (e[0], shape)]
            heapq.heapify(self._shapes[shape])

    def oldest(self) -> tuple[str, Shape] | None:
        """The key and shape of the oldest job of any unblocked shape, or None."""
        while self._heads:
            job_id, _, key, shape = self._heads[0]
            if shape not in self.blocked and self._head(shape) == (job_id, key):
                return key, shape
            heapq.heappop(self._heads)
        return None

    def block(self, shape: Shape) -> None:
        """The shape's oldest job fits nowhere: leave the shape alone until unblocked."""
        self.blocked.add(shape)

    def unblock(self, node: NodeView, free: float) -> None:
        """The node gained room (or appeared): its shapes that now could fit are looked
        at again. O(blocked shapes), which is the number of distinct shapes, not jobs."""
        woken = [shape for shape in self.blocked if shape.could_fit(node, free)]
        for shape in woken:
            self.blocked.discard(shape)
            self._head_moved(shape)

    def _head(self, shape: Shape) -> tuple[str, str] | None:
        heap = self._shapes.get(shape)
        if heap is None:
            return None
        while heap and self.members.get(heap[0][1]) != (heap[0][0], shape):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _head_moved(self, shape: Shape) -> None:
        head = self._head(shape)
        if head is not None and shape not in self.blocked:
            heapq.heappush(self._heads, (head[0], next(self._order), head[1], shape))
