"""The leader's steps for a schedule: catch-up, the window, pause, concurrency, bounded state."""

from __future__ import annotations

import dataclasses
from typing import Any

from schedagent.core import schedplan
from schedagent.core.schedplan import Fire, ScheduleState, Skip, decide, initial_state, record
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SigningKey

KEY = SigningKey.generate()
START = 1_800_000_000  # a multiple of 10: slots of every=10 fall on it


def schedule(**fields: Any) -> Schedule:
    raw = {"name": "s", "every": 10, "job": {"cmd": "true"}, **fields}
    definition = parse_definition(raw)
    return Schedule(definition, KEY.sign_schedule(definition.to_dict(), now=START))


def run(
    s: Schedule, now: float, led_since: float, state: ScheduleState | None = None
) -> tuple[ScheduleState, list[schedplan.Step]]:
    """Every step until none is due, firing jobs named after their slot; runs stay live."""
    state = state or initial_state(s)
    steps: list[schedplan.Step] = []
    live: set[str] = set(state.live)
    while (step := decide(s, state, now, led_since, live)) is not None:
        steps.append(step)
        job = f"job-{step.slot}" if isinstance(step, Fire) else None
        state = record(state, step, live, job)
        live = set(state.live)
    return state, steps


def fired(steps: list[schedplan.Step]) -> list[int]:
    return [s.slot for s in steps if isinstance(s, Fire)]


def test_on_time_slots_fire_one_by_one_and_nothing_before_the_signing() -> None:
    s = schedule(concurrency="allow")
    state, steps = run(s, START + 35, led_since=START)
    assert fired(steps) == [START + 10, START + 20, START + 30]
    assert state.last_slot == START + 30
    assert decide(s, state, START + 39, START, set()) is None
    assert schedplan.next_due(s, state) == START + 40


def test_catch_up_after_nobody_led() -> None:
    # Slots 10..50 came while no agent led; the leader starts at +55.
    for policy, want in (("none", []), ("one", [START + 50]), ("all", [10, 20, 30, 40, 50])):
        s = schedule(catch_up=policy, concurrency="allow")
        _, steps = run(s, START + 55, led_since=START + 55)
        expected = [START + x for x in want] if policy == "all" else want
        assert fired(steps) == expected, policy
        skipped = [(k.first, k.last, k.count, k.reason) for k in steps if isinstance(k, Skip)]
        if policy == "none":
            assert skipped == [(START + 10, START + 50, 5, schedplan.MISSED_NONE)]
        if policy == "one":
            assert skipped == [(START + 10, START + 40, 4, schedplan.MISSED_ONE)]


def test_slots_older_than_the_window_are_skipped_once_as_a_range() -> None:
    s = schedule(catch_up="all", catch_up_window=25, concurrency="allow")
    state, steps = run(s, START + 100, led_since=START + 100)
    assert steps[0] == Skip(START + 10, START + 70, 7, schedplan.MISSED_WINDOW)
    assert fired(steps) == [START + 80, START + 90, START + 100]
    assert state.recent[0]["skipped"] == schedplan.MISSED_WINDOW


def test_paused_and_resumed() -> None:
    paused = dataclasses.replace(schedule(), paused=True)
    state, steps = run(paused, START + 45, led_since=START)
    assert steps == [Skip(START + 10, START + 40, 4, schedplan.PAUSED)]
    resumed = dataclasses.replace(schedule(), resumed_at=START + 62.5)
    state, steps = run(resumed, START + 75, led_since=START, state=state)
    assert fired(steps) == [START + 70]
    assert state.recent[0] == {
        "slot": START + 10,
        "until": START + 60,
        "count": 6,
        "skipped": schedplan.PAUSED,
    }


def test_concurrency_policies_with_a_run_still_live() -> None:
    forbid = schedule(concurrency="forbid")
    state, steps = run(forbid, START + 35, led_since=START)
    assert fired(steps) == [START + 10]  # it stays live: 20 and 30 are forbidden
    assert state.recent[-1] == {
        "slot": START + 20,
        "until": START + 30,
        "count": 2,
        "skipped": schedplan.FORBID,
    }
    replace = schedule(concurrency="replace")
    state, steps = run(replace, START + 35, led_since=START)
    assert steps == [
        Fire(START + 10),
        Fire(START + 20, (f"job-{START + 10}",)),
        Fire(START + 30, (f"job-{START + 20}",)),
    ]
    assert state.live == (f"job-{START + 30}",)
    # A run that ended leaves `live`: forbid fires again.
    state = initial_state(forbid)
    state = record(state, Fire(START + 10), set(), "a")
    assert decide(forbid, state, START + 20, START, set()) == Fire(START + 20)


def test_a_thousand_slots_do_not_grow_the_state() -> None:
    s = schedule(concurrency="allow", catch_up_window=20_000)
    state, steps = run(s, START + 10_000, led_since=START)
    assert len(fired(steps)) == 1000
    assert len(state.recent) == schedplan.RECENT and len(state.live) == schedplan.LIVE
    assert len(state.to_json()) < 6000
    assert ScheduleState.from_json(state.to_json()) == state


def test_splay_delays_a_slot_deterministically() -> None:
    s = schedule(splay=9.0, concurrency="allow")
    due = s.definition.due(START + 10)
    assert START + 10 <= due < START + 19
    assert decide(s, initial_state(s), due - 0.01, START, set()) is None
    assert decide(s, initial_state(s), due, START, set()) == Fire(START + 10)


def test_state_of_another_schedule_of_that_name_is_not_used() -> None:
    s = schedule()
    stale = ScheduleState("another-nonce", START + 990)
    assert schedplan.state_for(s, stale) == initial_state(s)
    assert schedplan.state_for(s, None).last_slot == START
