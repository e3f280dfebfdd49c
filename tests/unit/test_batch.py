"""Cutting a batch of creates into etcd transactions: within the op and byte limits, in
order, and each idempotency key created once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schedagent.core.batch import CreatePlan, plan_creates


def test_keyed_jobs_go_64_to_a_transaction_unkeyed_128() -> None:
    keyed = plan_creates([(f"k{n}", 100) for n in range(130)])
    assert [len(c) for c in keyed.chunks] == [64, 64, 2]
    unkeyed = plan_creates([(None, 100)] * 300)
    assert [len(c) for c in unkeyed.chunks] == [128, 128, 44]


def test_two_compares_a_job_take_42_keyed_or_64_unkeyed() -> None:
    keyed = plan_creates([(f"k{n}", 100) for n in range(100)], ops_per_job=2)
    assert [len(c) for c in keyed.chunks] == [42, 42, 16]
    unkeyed = plan_creates([(None, 100)] * 130, ops_per_job=2)
    assert [len(c) for c in unkeyed.chunks] == [64, 64, 2]


def test_a_chunk_stays_under_the_byte_limit_and_a_huge_record_goes_alone() -> None:
    plan = plan_creates([(None, 400), (None, 400), (None, 400), (None, 5000), (None, 1)], 128, 1000)
    assert plan.chunks == [[0, 1], [2], [3], [4]]


def test_a_repeated_key_points_at_its_first_spec() -> None:
    plan = plan_creates([("a", 1), ("b", 1), ("a", 1), (None, 1), ("b", 1)])
    assert plan == CreatePlan(chunks=[[0, 1, 3]], same_as={2: 0, 4: 1})


@given(
    st.lists(st.tuples(st.none() | st.sampled_from("abcdefgh"), st.integers(1, 300)), max_size=400),
    st.integers(3, 128),
    st.integers(1, 2),
)
def test_every_spec_is_planned_once_in_order_within_limits(
    items: list[tuple[str | None, int]], max_ops: int, per_job: int
) -> None:
    plan = plan_creates(items, max_ops, 2000, per_job)
    created = [index for chunk in plan.chunks for index in chunk]
    assert created == sorted(created)
    assert sorted(created + list(plan.same_as)) == list(range(len(items)))
    for chunk in plan.chunks:
        ops = sum(per_job if items[i][0] is None else per_job + 1 for i in chunk)
        assert len(chunk) == 1 or (ops <= max_ops and sum(items[i][1] for i in chunk) <= 2000)
    keys = [items[i][0] for i in created if items[i][0] is not None]
    assert len(keys) == len(set(keys))
    for index, owner in plan.same_as.items():
        assert owner < index and items[owner][0] == items[index][0]
