"""Schedules after schedules: which may, the order of the leader's steps, a slot's parents."""

from __future__ import annotations

from typing import Any

import pytest

from schedagent.core import schedafter, schedplan
from schedagent.core.schedafter import Outcome, Skipped, gate, parent_slot, parents_first
from schedagent.core.schedplan import Fire, ScheduleState, Skip, initial_state, record
from schedagent.core.schedule import Definition, Schedule, parse_definition
from schedagent.core.signing import SigningKey

KEY = SigningKey.generate()
START = 1_800_000_000  # a multiple of 10 (and of 60)


def definition(**fields: Any) -> Definition:
    return parse_definition({"name": "s", "job": {"cmd": "true"}, **fields})


def schedule(signed_at: float = START, **fields: Any) -> Schedule:
    d = definition(**{"every": 10, **fields})
    return Schedule(d, KEY.sign_schedule(d.to_dict(), now=signed_at))


@pytest.mark.parametrize(
    ("child", "parent", "why"),
    [
        ({"every": 10}, {"every": 10}, None),
        ({"every": 60}, {"every": 10}, None),  # every 6th slot of the parent
        ({"every": 10}, {"every": 60}, "not a multiple of its every 60s"),
        ({"every": 15}, {"every": 10}, "not a multiple"),
        ({"cron": "*/5 * * * *"}, {"cron": "*/5  *  * * *"}, None),
        ({"cron": "@daily"}, {"cron": "0 0 * * *"}, None),
        ({"cron": "@daily", "tz": "Europe/Berlin"}, {"cron": "@daily"}, "same --cron and --tz"),
        ({"cron": "0 * * * *"}, {"cron": "*/5 * * * *"}, "same --cron and --tz"),
        ({"cron": "* * * * *"}, {"every": 60}, "the same kind of slots"),
        ({"every": 60}, {"cron": "* * * * *"}, "the same kind of slots"),
    ],
)
def test_a_child_may_follow_a_parent_whose_slots_include_its_own(
    child: dict[str, Any], parent: dict[str, Any], why: str | None
) -> None:
    found = schedafter.incompatible(definition(**child), definition(**parent))
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found


def test_parents_come_first_and_a_cycle_is_named() -> None:
    after = {"load": ["transform"], "report": ["load", "extract"], "transform": ["extract"]}
    order, cyclic = parents_first({**after, "extract": []})
    assert not cyclic
    for child, parents in after.items():
        assert all(order.index(p) < order.index(child) for p in parents), order
    # A parent the loop does not know (deleted) is ignored for the order.
    order, _ = parents_first({"child": ["gone"]})
    assert order == ["child"]
    # x and y wait for each other (made so by deleting and creating again); z waits for y.
    order, cyclic = parents_first({"x": ["y"], "y": ["x"], "z": ["y"], "free": []})
    assert set(order) == {"x", "y", "z", "free"}
    assert set(cyclic) == {"x", "y"}
    assert "wait for each other" in cyclic["x"] and "x after y" in cyclic["x"]
    assert order.index("y") < order.index("z")


def fired_until(s: Schedule, now: float, skip: tuple[int, ...] = ()) -> ScheduleState:
    """The parent's state after its steps until now: slots in `skip` skipped (paused)."""
    state = initial_state(s)
    for slot in s.definition.slots().between(state.last_slot, int(now), 100):
        step: schedplan.Step = Skip(slot, slot, 1, schedplan.PAUSED) if slot in skip else Fire(slot)
        state = record(state, step, set(), None if slot in skip else f"job-{slot}")
    return state


def test_what_a_parent_did_with_a_slot() -> None:
    parent = schedule()
    state = fired_until(parent, START + 50, skip=(START + 20, START + 30))
    assert parent_slot(parent, state, START + 10) is Outcome.RAN
    assert parent_slot(parent, state, START + 20) == Skipped("its slot was skipped: paused")
    assert parent_slot(parent, state, START + 30) == Skipped("its slot was skipped: paused")
    assert parent_slot(parent, state, START + 50) is Outcome.RAN
    assert parent_slot(parent, state, START + 60) is Outcome.WAIT  # not handled yet
    assert parent_slot(parent, None, START + 10) is Outcome.WAIT  # no state yet: nothing handled
    assert parent_slot(None, None, START + 10) == Skipped("no such schedule (deleted?)")
    # Slots the parent does not have: before its signing, or off its interval.
    later = schedule(signed_at=START + 35)
    assert "no slot then" in str(parent_slot(later, None, START + 30))
    assert "no slot then" in str(parent_slot(schedule(every=20), None, START + 30))
    # A state of another schedule of that name (deleted, made again): not this one's.
    again = schedule(signed_at=START + 5)
    assert parent_slot(again, state, START + 10) is Outcome.WAIT
    # Handled long ago, its outcome no longer kept: the caller reads the job.
    old = fired_until(parent, START + 10 * (schedplan.RECENT + 10))
    assert parent_slot(parent, old, START + 10) is Outcome.UNKNOWN
    assert schedafter.known(Outcome.UNKNOWN, run_exists=True) is Outcome.RAN
    assert schedafter.known(Outcome.UNKNOWN, run_exists=False) == Skipped(
        "it made no run of the slot"
    )
    assert schedafter.known(Outcome.WAIT, run_exists=False) is Outcome.WAIT


def test_a_child_slot_fires_once_every_parent_ran_it_waits_or_is_skipped() -> None:
    slot = START + 10
    assert gate(slot, {"a": Outcome.RAN, "b": Outcome.RAN}) is None
    assert gate(slot, {"a": Outcome.RAN, "b": Outcome.WAIT}) == ["b"]
    skipped = gate(slot, {"a": Outcome.WAIT, "b": Skipped("its slot was skipped: paused")})
    assert skipped == Skip(slot, slot, 1, "after b: its slot was skipped: paused")
