"""The placement code alone over simulated clusters: decisions per second by cluster size."""

from __future__ import annotations

import random
import time

from schedagent.core.model import JobSpec
from schedagent.core.placement import NodeView, PlacementIndex

ZONES = ["a", "b", "c", "d"]


def simulated_nodes(count: int, rng: random.Random) -> tuple[list[NodeView], dict[str, float]]:
    nodes = [
        NodeView(f"n{i}", float(rng.choice([2, 4, 8, 16])), {"zone": rng.choice(ZONES)})
        for i in range(count)
    ]
    free = {n.name: rng.uniform(0, n.cpus) for n in nodes}
    return nodes, free


def decisions_per_second(count: int, seconds: float = 1.0) -> float:
    """Placements (choose, then take the CPUs) per second, as the scheduler makes them."""
    rng = random.Random(count)
    nodes, free = simulated_nodes(count, rng)
    index = PlacementIndex(nodes, free)
    specs = [JobSpec(cmd="x", cpus=1.0), JobSpec(cmd="x", cpus=2.0, labels={"zone": "b"})]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        spec = specs[done % 2]
        target = index.choose(spec)
        if target is None:  # the cluster filled up: start again from the same state
            index = PlacementIndex(nodes, free)
            continue
        index.take(target, spec.cpus)
        done += 1
    return done / (time.perf_counter() - start)


def placement_figures() -> dict[str, float]:
    return {str(n): decisions_per_second(n) for n in (500, 5000, 50000)}


if __name__ == "__main__":
    for size, rate in placement_figures().items():
        print(f"{size:>6} nodes: {rate:10.0f} placements/s")
