"""Where a job can go: pure placement by free CPU slots and constraints (no I/O)."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Mapping

from schedagent.core.model import Job, JobSpec

EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    cpus: float
    labels: Mapping[str, str]
    draining: bool = False  # stopping, cordoned or suspect: takes no new jobs


def matches(spec: JobSpec, node: NodeView) -> bool:
    """Whether the node satisfies the job's constraints (ignoring capacity)."""
    if spec.node is not None and spec.node != node.name:
        return False
    return all(node.labels.get(k) == v for k, v in spec.labels.items())


def free_cpus(nodes: Iterable[NodeView], jobs: Iterable[Job]) -> dict[str, float]:
    """Each node's CPUs minus those of its ASSIGNED and RUNNING jobs."""
    free = {node.name: node.cpus for node in nodes}
    for job in jobs:
        if job.state.holds_cpus and job.node in free:
            free[job.node] -= job.spec.cpus
    return free


def choose_node(spec: JobSpec, nodes: Iterable[NodeView], free: Mapping[str, float]) -> str | None:
    """The eligible node with the most free CPUs (spreading load), or None if none fits."""
    best: str | None = None
    best_free = -1.0
    for node in nodes:
        room = free.get(node.name, 0.0)
        if node.draining or room + EPSILON < spec.cpus or not matches(spec, node):
            continue
        if room > best_free or (room == best_free and best is not None and node.name < best):
            best, best_free = node.name, room
    return best


def unplaceable_reason(spec: JobSpec, nodes: Iterable[NodeView]) -> str | None:
    """Why no node could ever take this job as the cluster stands, or None if one could."""
    nodes = list(nodes)
    if not nodes:
        return "no nodes are registered"
    candidates = [n for n in nodes if matches(spec, n)]
    if not candidates:
        return f"no node matches the constraints ({_describe(spec)})"
    if not [n for n in candidates if not n.draining]:
        return f"every node matching the constraints ({_describe(spec)}) is draining or cordoned"
    biggest = max(n.cpus for n in candidates if not n.draining)
    if biggest + EPSILON < spec.cpus:
        return f"needs {spec.cpus:g} CPUs but the largest matching node has {biggest:g}"
    return None


def _describe(spec: JobSpec) -> str:
    parts = []
    if spec.node is not None:
        parts.append(f"node={spec.node}")
    parts.extend(f"label {k}={v}" for k, v in sorted(spec.labels.items()))
    return ", ".join(parts) or "none"


LabelKey = tuple[str, str] | None
HeapEntry = tuple[float, str, int]


class PlacementIndex:
    """Eligible nodes ordered by free CPUs: a placement in O(log n) instead of a scan.

    One max-heap of all nodes and one per label pair; an entry is stale once its
    node's version moved on (lazy deletion), and heaps are rebuilt when mostly stale.
    Picks what choose_node picks: the most free CPUs, then the smallest name.

    It lives as long as the leader leads: update, remove and set_free change one node
    in O(log n) (times its labels), so a change is never a rebuild of the whole index.
    """

    def __init__(
        self, nodes: Iterable[NodeView] = (), free: Mapping[str, float] | None = None
    ) -> None:
        free = free or {}
        self.nodes = {n.name: n for n in nodes if not n.draining}
        self.free = {name: free.get(name, 0.0) for name in self.nodes}
        self.version = dict.fromkeys(self.nodes, 0)
        self.heaps: dict[LabelKey, list[HeapEntry]] = {}
        self._rebuild()

    def _rebuild(self) -> None:
        # Versions of removed nodes are kept until here so their heap entries stay stale.
        self.version = {name: self.version.get(name, 0) for name in self.nodes}
        self.heaps = {}
        for name, node in self.nodes.items():
            entry = (-self.free[name], name, self.version[name])
            for key in _keys(node):
                self.heaps.setdefault(key, []).append(entry)
        for heap in self.heaps.values():
            heapq.heapify(heap)

    def update(self, node: NodeView, free: float) -> None:
        """Add the node, or change what it offers; a draining node is taken out."""
        if node.draining:
            self.remove(node.name)
            return
        self.nodes[node.name] = node
        self._set(node.name, free)

    def remove(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            del self.free[name]
            self.version[name] += 1

    def set_free(self, name: str, free: float) -> None:
        """The node's free CPUs are now `free` (no-op for a node not in the index)."""
        if name in self.nodes:
            self._set(name, free)

    def take(self, name: str, cpus: float) -> None:
        """Count cpus as used on the node (a placement was made there)."""
        self._set(name, self.free[name] - cpus)

    def _set(self, name: str, free: float) -> None:
        self.free[name] = free
        self.version[name] = self.version.get(name, 0) + 1
        entry = (-free, name, self.version[name])
        for key in _keys(self.nodes[name]):
            heapq.heappush(self.heaps.setdefault(key, []), entry)
        if len(self.heaps[None]) > 4 * len(self.nodes) + 64:
            self._rebuild()

    def choose(self, spec: JobSpec) -> str | None:
        if spec.node is not None:
            node = self.nodes.get(spec.node)
            fits = node is not None and self.free[node.name] + EPSILON >= spec.cpus
            return spec.node if fits and node is not None and matches(spec, node) else None
        keys: list[LabelKey] = [(k, v) for k, v in spec.labels.items()] or [None]
        if any(key not in self.heaps for key in keys):
            return None
        heap = min((self.heaps[key] for key in keys), key=len)
        self._drop_stale(heap)
        if not heap or -heap[0][0] + EPSILON < spec.cpus:
            return None  # not even the node with the most room fits
        if len(keys) == 1:
            return heap[0][1]
        return self._scan(heap, spec)

    def _current(self, entry: HeapEntry) -> bool:
        return entry[2] == self.version.get(entry[1], -1) and entry[1] in self.nodes

    def _drop_stale(self, heap: list[HeapEntry]) -> None:
        while heap and not self._current(heap[0]):
            heapq.heappop(heap)

    def _scan(self, heap: list[HeapEntry], spec: JobSpec) -> str | None:
        """Several label constraints: the best current entry that matches them all."""
        best: HeapEntry | None = None
        for entry in heap:
            neg_free, name, _ = entry
            if not self._current(entry) or -neg_free + EPSILON < spec.cpus:
                continue
            if matches(spec, self.nodes[name]) and (best is None or entry < best):
                best = entry
        return None if best is None else best[1]


def _keys(node: NodeView) -> list[LabelKey]:
    return [None, *node.labels.items()]
