"""Schedules that run after others (`after`): which may, the order of steps, a slot's parents.

Pure. Slot T of a child schedule waits for its parents' runs of the same slot T, whose
ids come from (parent, T): the leader adds them to the run's `after` and the ordinary
dependency logic (core/deps.py) holds the run until they SUCCEEDED. That logic treats a
parent it cannot find as failed, so the leader must not fire the child's slot before
each parent has handled the slot: `gate` says whether to fire, wait, or skip it (and
why: the parent skipped the slot, or has no such slot).
"""

from __future__ import annotations

import dataclasses
import enum
import graphlib
from collections.abc import Mapping, Sequence

from schedagent.core import schedplan
from schedagent.core.schedplan import ScheduleState, Skip
from schedagent.core.schedule import Definition, Schedule
from schedagent.core.slots import cron_fields


def incompatible(child: Definition, parent: Definition) -> str | None:
    """Why the child cannot run after the parent (its slots are not all the parent's
    slots), or None if it can."""
    if child.every is not None and parent.every is not None:
        if child.every % parent.every == 0:
            return None
        return (
            f"every {child.every}s is not a multiple of its every {parent.every}s, "
            "so some slots would have no run of it to wait for"
        )
    if child.cron is not None and parent.cron is not None:
        if cron_fields(child.cron) == cron_fields(parent.cron) and child.tz == parent.tz:
            return None
        return (
            f"cron {child.cron!r} in {child.tz} is not its cron {parent.cron!r} in "
            f"{parent.tz}: give the same --cron and --tz"
        )
    return "one has --cron and the other --every: give both the same kind of slots"


def parents_first(after: Mapping[str, Sequence[str]]) -> tuple[list[str], dict[str, str]]:
    """The schedules in an order where each comes after its parents, and the ones in a
    cycle of `after` (possible only if schedules were deleted and made again meanwhile)
    with the reason each of their slots is skipped. Parents not in `after` are ignored."""
    graph = {name: {p for p in parents if p in after} for name, parents in after.items()}
    cyclic: dict[str, str] = {}
    while True:
        try:
            return list(graphlib.TopologicalSorter(graph).static_order()), cyclic
        except graphlib.CycleError as exc:
            cycle: list[str] = exc.args[1]
            # cycle[i] is a parent of cycle[i + 1]: cut one edge, mark them all, go on.
            graph[cycle[1]].discard(cycle[0])
            reason = f"after: schedules wait for each other ({' after '.join(reversed(cycle))})"
            for name in cycle:
                cyclic.setdefault(name, reason)


class Outcome(enum.Enum):
    WAIT = "wait"  # the parent has not handled the slot yet
    RAN = "ran"  # the parent's run of the slot exists
    UNKNOWN = "unknown"  # handled, but no longer in its recent outcomes: read the job


@dataclasses.dataclass(frozen=True)
class Skipped:
    """The parent has no run of the slot, and will not have one."""

    reason: str


ParentSlot = Outcome | Skipped


def parent_slot(parent: Schedule | None, stored: ScheduleState | None, slot: int) -> ParentSlot:
    """What the parent did with the slot, from its schedule and state records."""
    if parent is None:
        return Skipped("no such schedule (deleted?)")
    if slot <= parent.starts_at or not parent.definition.slots().is_slot(slot):
        return Skipped("it has no slot then (signed later, or other slots)")
    state = schedplan.state_for(parent, stored)
    if state.last_slot < slot:
        return Outcome.WAIT
    for entry in reversed(state.recent):
        first = entry.get("slot")
        if type(first) is not int:
            continue
        if "job" in entry and first == slot:
            return Outcome.RAN
        until = entry.get("until")
        if "skipped" in entry and type(until) is int and first <= slot <= until:
            return Skipped(f"its slot was skipped: {entry['skipped']}")
    return Outcome.UNKNOWN


def known(outcome: ParentSlot, run_exists: bool) -> ParentSlot:
    """An UNKNOWN outcome settled by whether the parent's run of the slot exists."""
    if outcome is not Outcome.UNKNOWN:
        return outcome
    return Outcome.RAN if run_exists else Skipped("it made no run of the slot")


def gate(slot: int, parents: Mapping[str, ParentSlot]) -> Skip | list[str] | None:
    """For a slot that would fire: None (fire it), the parents to wait for, or a Skip
    naming the first parent that will have no run of the slot. UNKNOWN outcomes must
    have been settled (`known`): they are waited for."""
    for name, outcome in parents.items():
        if isinstance(outcome, Skipped):
            return Skip(slot, slot, 1, f"after {name}: {outcome.reason}")
    waiting = [name for name, outcome in parents.items() if outcome is not Outcome.RAN]
    return waiting or None
