"""Where a job can go: pure placement by free CPU slots and constraints (no I/O)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .model import Job, JobSpec

EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    cpus: float
    labels: Mapping[str, str]
    draining: bool = False


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
        return f"every node matching the constraints ({_describe(spec)}) is draining"
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
