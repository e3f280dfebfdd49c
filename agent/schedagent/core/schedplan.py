"""What the leader does next for a schedule: fire a slot, or skip slots and say why.

Pure: the leader's loop (daemon/schedules.py) reads the state record and which of the
schedule's runs are still live, asks `decide` for one step, writes it (the job and the
new state in one transaction) and asks again. The state keeps the last slot handled and
the last RECENT outcomes, so a schedule with a thousand slots behind it holds as much
as one with fifty.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection
from typing import Any

from schedagent.core.schedule import Schedule
from schedagent.core.slots import Slots

RECENT = 50  # outcomes kept per schedule: slot, job or why it was skipped
LIVE = 50  # runs of a schedule looked at for its concurrency policy
DUE_LIMIT = 1000  # slots looked at in one step; the rest in the next
MISSED_WINDOW = "missed beyond the catch-up window"
PAUSED = "paused"
MISSED_NONE = "missed while no agent led (catch-up none)"
MISSED_ONE = "missed while no agent led (catch-up one runs the latest)"
FORBID = "forbid: the previous run was still running"


@dataclasses.dataclass(frozen=True)
class Fire:
    """Create the slot's job; cancel these earlier runs first (replace)."""

    slot: int
    cancel: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Skip:
    """Slots first..last (count of them, None if not counted) do not run, for reason."""

    first: int
    last: int
    count: int | None
    reason: str


Step = Fire | Skip


@dataclasses.dataclass(frozen=True)
class ScheduleState:
    """The leader's record of a schedule, under `{p}/schedstate/{name}`.

    `schedule` is the signature nonce of the schedule it belongs to: a schedule deleted
    and made again under the same name starts afresh.
    """

    schedule: str
    last_slot: int
    recent: tuple[dict[str, Any], ...] = ()
    live: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        body = {"v": 1, **dataclasses.asdict(self)}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ScheduleState:
        """ValueError for anything but a state record."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a schedule state must be a JSON object")
        schedule, last = data.get("schedule"), data.get("last_slot")
        recent, live = data.get("recent", []), data.get("live", [])
        if not isinstance(schedule, str) or type(last) is not int:
            raise ValueError("a schedule state needs schedule and last_slot")
        if not isinstance(recent, list) or not all(isinstance(e, dict) for e in recent):
            raise ValueError("a schedule state's recent must be a list of objects")
        if not isinstance(live, list) or not all(isinstance(j, str) for j in live):
            raise ValueError("a schedule state's live must be a list of job ids")
        return cls(schedule, last, tuple(recent), tuple(live))


def initial_state(schedule: Schedule) -> ScheduleState:
    return ScheduleState(schedule.signature.nonce, schedule.starts_at)


def state_for(schedule: Schedule, stored: ScheduleState | None) -> ScheduleState:
    """The stored state if it is this schedule's, else a fresh one."""
    if stored is None or stored.schedule != schedule.signature.nonce:
        return initial_state(schedule)
    return stored


def next_due(schedule: Schedule, state: ScheduleState) -> float:
    """When the first slot not yet handled fires."""
    definition = schedule.definition
    return definition.due(definition.slots().next_after(state.last_slot))


def decide(
    schedule: Schedule, state: ScheduleState, now: float, led_since: float, live: Collection[str]
) -> Step | None:
    """The next step for the earliest slot not handled yet, or None if none is due.

    `led_since`: when this leader's loop started; a slot due before it came while no
    agent led (or the last leader had not got to it), and catch-up decides. `live`: the
    schedule's runs that are not final yet.
    """
    definition = schedule.definition
    slots = definition.slots()
    first = slots.next_after(state.last_slot)
    if definition.due(first) > now:
        return None
    if schedule.paused:
        return _skip_until(slots, first, math.floor(now), PAUSED)
    if schedule.resumed_at is not None and first <= schedule.resumed_at:
        return _skip_until(slots, first, math.floor(min(schedule.resumed_at, now)), PAUSED)
    horizon = math.floor(now - definition.catch_up_window)
    if first < horizon:
        return _skip_until(slots, first, horizon - 1, MISSED_WINDOW)
    due = _due(schedule, slots, state.last_slot, now)
    late = [slot for slot in due if definition.due(slot) < led_since]
    if late and definition.catch_up == "none":
        return Skip(late[0], late[-1], len(late), MISSED_NONE)
    if definition.catch_up == "one" and len(late) > 1:
        return Skip(late[0], late[-2], len(late) - 1, MISSED_ONE)
    slot = due[0]
    if live and definition.concurrency == "forbid":
        return Skip(slot, slot, 1, FORBID)
    return Fire(slot, tuple(sorted(live)) if definition.concurrency == "replace" else ())


def _due(schedule: Schedule, slots: Slots, after: int, now: float) -> list[int]:
    """The slots after `after` that have come (time and splay), in order."""
    due = []
    for slot in slots.between(after, math.floor(now), DUE_LIMIT):
        if schedule.definition.due(slot) > now:
            break
        due.append(slot)
    return due


def _skip_until(slots: Slots, first: int, until: int, reason: str) -> Skip:
    last = slots.latest_at_or_before(until)
    if last is None or last < first:
        last = first
    count = None if slots.every is None else (last - first) // slots.every + 1
    return Skip(first, last, count, reason)


def record(
    state: ScheduleState,
    step: Step,
    live: Collection[str],
    job_id: str | None = None,
    kind: str = "job",
) -> ScheduleState:
    """The state after step (job_id: the job a Fire created, or with kind "group" the
    fleet run); `live` as decide saw it."""
    recent = list(state.recent)
    still_live = [j for j in state.live if j in live]
    if isinstance(step, Skip):
        last = step.last
        entry: dict[str, Any] = {"slot": step.first, "until": step.last}
        entry.update(count=step.count, skipped=step.reason)
        previous = recent[-1] if recent else None
        if previous is not None and previous.get("skipped") == step.reason:
            # Consecutive slots skipped for one reason are one entry.
            counts = (previous.get("count"), step.count)
            total = None if None in counts else sum(c or 0 for c in counts)
            recent[-1] = {**previous, "until": step.last, "count": total}
        else:
            recent.append(entry)
    else:
        last = step.slot
        recent.append({"slot": step.slot, kind: job_id})
        if job_id is not None:
            still_live = [j for j in still_live if j not in step.cancel] + [job_id]
    return dataclasses.replace(
        state,
        last_slot=last,
        recent=tuple(recent[-RECENT:]),
        live=tuple(still_live[-LIVE:]),
    )
