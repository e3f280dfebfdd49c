"""Why a job is where it is: each node's verdict on a pending job, or why a node won (pure).

The leader computes it from its view (core/leaderview.py) when `schedctl explain`
asks; the checks are placement's own (core/placement.py), one reason per failed
check, so the answer names every obstacle a node has, not just the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from schedagent.core.model import Job, JobState, NodeRecord
from schedagent.core.placement import EPSILON


@dataclasses.dataclass(frozen=True)
class Obstacles:
    """What keeps nodes from new work now, besides their CPUs and labels."""

    cordoned: frozenset[str] = frozenset()  # an operator's cordon
    drained: frozenset[str] = frozenset()  # an operator's drain (a cordon too)
    suspect: frozenset[str] = frozenset()  # its leadership fell silent (after a leader loss)
    shunned: frozenset[str] = frozenset()  # did not take up a dispatch lately


@dataclasses.dataclass(frozen=True)
class NodeVerdict:
    node: str
    cpus: float
    free: float
    reasons: tuple[str, ...]  # why it cannot take the job now; empty: it could

    @property
    def fits(self) -> bool:
        return not self.reasons


@dataclasses.dataclass(frozen=True)
class Explanation:
    job: str
    state: str
    summary: str
    nodes: tuple[NodeVerdict, ...]


def verdict(job: Job, record: NodeRecord, free: float, obstacles: Obstacles) -> NodeVerdict:
    """Whether this node could take the job now, and every reason it could not."""
    spec, name = job.spec, record.name
    reasons = []
    if spec.node is not None and spec.node != name:
        reasons.append(f"the job is pinned to node {spec.node}")
    for key, wanted in sorted(spec.labels.items()):
        has = record.labels.get(key)
        if has is None:
            reasons.append(f"no label {key}")
        elif has != wanted:
            reasons.append(f"label {key}={has}, the job asks {key}={wanted}")
    reasons.extend(_held_back(name, record, obstacles))
    if free + EPSILON < spec.cpus:
        reasons.append(f"{free:g} of {record.cpus:g} CPUs free, the job asks {spec.cpus:g}")
    return NodeVerdict(name, record.cpus, free, tuple(reasons))


def _held_back(name: str, record: NodeRecord, obstacles: Obstacles) -> list[str]:
    reasons = []
    if name in obstacles.drained:
        reasons.append("drained by an operator (schedctl node uncordon)")
    elif name in obstacles.cordoned:
        reasons.append("cordoned by an operator (schedctl node uncordon)")
    if record.draining:
        reasons.append("its agent is stopping")
    if name in obstacles.suspect:
        reasons.append("suspect: its leadership fell silent, no new work for now")
    if name in obstacles.shunned:
        reasons.append("did not take up a dispatch lately, no new work for a while")
    return reasons


def explain(
    job: Job,
    records: Iterable[NodeRecord],
    free: Mapping[str, float],
    obstacles: Obstacles,
    now: float,
    waiting_for: str | None = None,
) -> Explanation:
    """The verdicts of every node, by name, and one line on the job as a whole.

    free: each node's CPUs not held by ASSIGNED or RUNNING jobs (the leader's count);
    waiting_for: why the leader holds it back (its parents), if it does.
    """
    nodes = tuple(
        verdict(job, r, free.get(r.name, r.cpus), obstacles)
        for r in sorted(records, key=lambda r: r.name)
    )
    return Explanation(job.id, str(job.state), _summary(job, nodes, now, waiting_for), nodes)


def _summary(job: Job, nodes: tuple[NodeVerdict, ...], now: float, waiting: str | None) -> str:
    if job.state.final:
        where = f" (last on {job.attempts[-1].node})" if job.attempts else ""
        return f"the job is {job.state}{where}: nothing to place"
    if job.state != JobState.PENDING:
        return _placed(job)
    if waiting is not None:
        return f"held back: {waiting}"
    if job.not_before > now:
        return f"retry backoff: placeable in {job.not_before - now:.1f}s"
    if job.spec.node is not None and job.spec.node not in {v.node for v in nodes}:
        return f"pinned to node {job.spec.node}, which is not registered"
    fitting = [v.node for v in nodes if v.fits]
    if not nodes:
        return "no nodes are registered"
    if not fitting:
        return "no node can take it now (each node's reasons below)"
    return f"{', '.join(fitting)} could take it now: it is placed at the leader's next pass"


def _placed(job: Job) -> str:
    spec = job.spec
    if spec.node is not None:
        why = "the only node it is pinned to"
    else:
        why = (
            "of the nodes that could take it then (labels, free CPUs, not cordoned),"
            " the one with the most free CPUs (ties: the first by name)"
        )
        if spec.labels:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items()))
            why = f"{why}; it asks {labels}"
    return f"{job.state} on {job.node} (attempt {job.attempt}): {why}"
