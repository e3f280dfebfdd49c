"""The pending queue: submit order across shapes, blocked shapes, lazy removal (pure logic)."""

from __future__ import annotations

import random

import pytest

from schedagent.core.model import JobSpec
from schedagent.core.pending import PendingQueue, Shape
from schedagent.core.placement import NodeView

ONE = Shape.of(JobSpec(cmd="x"))
TWO = Shape.of(JobSpec(cmd="x", cpus=2))
ON_A = Shape.of(JobSpec(cmd="x", node="a"))
ZONE_X = Shape.of(JobSpec(cmd="x", labels={"zone": "x"}))


def drain(queue: PendingQueue) -> list[str]:
    """Every key in the order placement would see them, taking each as it goes."""
    order = []
    while (oldest := queue.oldest()) is not None:
        order.append(oldest[0])
        queue.remove(oldest[0])
    return order


def test_oldest_is_by_job_id_across_shapes() -> None:
    queue = PendingQueue()
    for job_id, shape in [("3", ONE), ("1", TWO), ("4", ONE), ("2", ON_A), ("0", ZONE_X)]:
        queue.add(f"k{job_id}", job_id, shape)
    assert drain(queue) == ["k0", "k1", "k2", "k3", "k4"]


def test_a_blocked_shape_is_skipped_until_a_node_where_it_could_fit_gains_room() -> None:
    queue = PendingQueue()
    queue.add("k1", "1", TWO)
    queue.add("k2", "2", ONE)
    queue.add("k3", "3", TWO)
    queue.block(TWO)
    assert queue.oldest() == ("k2", ONE)
    queue.remove("k2")
    assert queue.oldest() is None
    queue.unblock(NodeView("a", 4, {}), free=1.0)  # still too small for two CPUs
    assert queue.oldest() is None
    queue.unblock(NodeView("a", 4, {}), free=2.0)
    assert drain(queue) == ["k1", "k3"]


def test_unblock_wakes_only_shapes_the_node_could_take() -> None:
    queue = PendingQueue()
    for job_id, shape in [("1", ON_A), ("2", ZONE_X), ("3", ONE)]:
        queue.add(f"k{job_id}", job_id, shape)
        queue.block(shape)
    queue.unblock(NodeView("b", 4, {"zone": "y"}), free=4.0)
    assert queue.blocked == {ON_A, ZONE_X}
    queue.unblock(NodeView("a", 4, {"zone": "x"}), free=4.0)
    assert not queue.blocked
    assert drain(queue) == ["k1", "k2", "k3"]


def test_an_emptied_shape_is_forgotten_with_its_block() -> None:
    queue = PendingQueue()
    queue.add("k1", "1", TWO)
    queue.block(TWO)
    queue.remove("k1")
    assert not queue.blocked and len(queue) == 0
    queue.add("k2", "2", TWO)
    assert queue.oldest() == ("k2", TWO)


@pytest.mark.parametrize("seed", range(20))
def test_random_adds_and_removes_keep_submit_order(seed: int) -> None:
    rng = random.Random(seed)
    queue = PendingQueue()
    live: dict[str, tuple[str, Shape]] = {}
    shapes = [ONE, TWO, ON_A, ZONE_X]
    for step in range(2000):
        n = rng.randrange(300)
        key = f"k{n}"
        if rng.random() < 0.5:
            member = (
                f"{n * 7919 % 300:04d}",
                rng.choice(shapes),
            )  # one id per key, not in key order
            queue.add(key, *member)
            live[key] = member
        else:
            queue.remove(key)
            live.pop(key, None)
        if step % 97 == 0:
            expected = min(((i, k) for k, (i, _) in live.items()), default=None)
            oldest = queue.oldest()
            assert (oldest and (live[oldest[0]][0], oldest[0])) == expected
    expected_order = [k for _, k in sorted((i, k) for k, (i, _) in live.items())]
    assert drain(queue) == expected_order
