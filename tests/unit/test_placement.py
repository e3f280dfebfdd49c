"""Placement by free CPU slots and constraints (pure logic)."""

from __future__ import annotations

import random

import pytest

from schedagent.core.model import Job, JobSpec, JobState
from schedagent.core.placement import (
    NodeView,
    PlacementIndex,
    choose_node,
    free_cpus,
    unplaceable_reason,
)

NODES = [
    NodeView("a", 2, {"zone": "x"}),
    NodeView("b", 4, {"zone": "y"}),
    NodeView("c", 8, {"zone": "y"}, draining=True),
]


def job(state: JobState, node: str | None, cpus: float = 1) -> Job:
    return Job(
        id="0" * 20, spec=JobSpec(cmd="true", cpus=cpus), state=state, submitted_at=0, node=node
    )


def test_free_cpus_counts_assigned_and_running_only() -> None:
    jobs = [
        job(JobState.RUNNING, "a"),
        job(JobState.ASSIGNED, "b", 2),
        job(JobState.SUCCEEDED, "a"),
        job(JobState.PENDING, None),
    ]
    assert free_cpus(NODES, jobs) == {"a": 1, "b": 2, "c": 8}


def test_choose_spreads_to_most_free_and_skips_draining() -> None:
    free = {"a": 2.0, "b": 4.0, "c": 8.0}
    assert choose_node(JobSpec(cmd="x"), NODES, free) == "b"


def test_choose_respects_capacity() -> None:
    assert choose_node(JobSpec(cmd="x", cpus=3), NODES, {"a": 2, "b": 2, "c": 8}) is None
    assert choose_node(JobSpec(cmd="x", cpus=2), NODES, {"a": 2, "b": 1, "c": 8}) == "a"


def test_choose_respects_node_and_label_constraints() -> None:
    free = {"a": 2.0, "b": 4.0, "c": 8.0}
    assert choose_node(JobSpec(cmd="x", node="a"), NODES, free) == "a"
    assert choose_node(JobSpec(cmd="x", labels={"zone": "x"}), NODES, free) == "a"
    assert choose_node(JobSpec(cmd="x", labels={"zone": "z"}), NODES, free) is None


def test_unplaceable_reasons() -> None:
    assert unplaceable_reason(JobSpec(cmd="x"), []) == "no nodes are registered"
    assert "node=zz" in (unplaceable_reason(JobSpec(cmd="x", node="zz"), NODES) or "")
    assert "draining" in (unplaceable_reason(JobSpec(cmd="x", node="c"), NODES) or "")
    assert "largest matching node has 4" in (
        unplaceable_reason(JobSpec(cmd="x", cpus=5), NODES) or ""
    )
    assert unplaceable_reason(JobSpec(cmd="x", cpus=4), NODES) is None


@pytest.mark.parametrize("seed", range(20))
def test_index_picks_what_the_scan_picks(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [
        NodeView(
            f"n{i}",
            float(rng.choice([1, 2, 4])),
            {"zone": rng.choice("ab"), "disk": rng.choice(["ssd", "hdd"])},
            draining=rng.random() < 0.1,
        )
        for i in range(rng.randint(1, 40))
    ]
    free = {n.name: float(rng.randint(0, int(n.cpus))) for n in nodes}
    index = PlacementIndex(nodes, free)
    specs = [
        JobSpec(cmd="x", cpus=1),
        JobSpec(cmd="x", cpus=2, labels={"zone": "a"}),
        JobSpec(cmd="x", cpus=1, labels={"zone": "b", "disk": "ssd"}),
        JobSpec(cmd="x", cpus=1, node="n3"),
        JobSpec(cmd="x", cpus=1, labels={"gpu": "yes"}),
    ]
    for _ in range(60):
        spec = rng.choice(specs)
        expected = choose_node(spec, nodes, free)
        assert index.choose(spec) == expected, (spec, expected)
        if expected is not None:
            free[expected] -= spec.cpus
            index.take(expected, spec.cpus)


@pytest.mark.parametrize("seed", range(20))
def test_index_kept_through_node_changes_picks_what_the_scan_picks(seed: int) -> None:
    rng = random.Random(seed)
    index = PlacementIndex()
    nodes: dict[str, NodeView] = {}
    free: dict[str, float] = {}
    specs = [
        JobSpec(cmd="x", cpus=1),
        JobSpec(cmd="x", cpus=2, labels={"zone": "a"}),
        JobSpec(cmd="x", cpus=1, labels={"zone": "b", "disk": "ssd"}),
        JobSpec(cmd="x", cpus=1, node="n3"),
    ]
    for _ in range(400):
        name = f"n{rng.randrange(8)}"
        action = rng.choice(["update", "update", "remove", "free", "take"])
        if action == "update":
            nodes[name] = NodeView(
                name,
                float(rng.choice([1, 2, 4])),
                {"zone": rng.choice("ab"), "disk": rng.choice(["ssd", "hdd"])},
                draining=rng.random() < 0.2,
            )
            free[name] = float(rng.randint(0, int(nodes[name].cpus)))
            index.update(nodes[name], free[name])
        elif action == "remove":
            nodes.pop(name, None)
            index.remove(name)
        elif action == "free" and name in nodes:
            free[name] = float(rng.randint(0, int(nodes[name].cpus)))
            index.set_free(name, free[name])
        spec = rng.choice(specs)
        expected = choose_node(spec, nodes.values(), free)
        assert index.choose(spec) == expected, (spec, expected)
        if action == "take" and expected is not None:
            free[expected] -= spec.cpus
            index.take(expected, spec.cpus)
