"""A fleet schedule's slots: the group each slot makes, and the check that a group is one.

Each slot of a schedule with `fleet` (a selector and a roll-out policy) is one fleet
run. Its group id comes from (schedule, slot), so whichever leader fires the slot, and
however often, makes the same group, created compared absent. The operator signed the
schedule, not the group: the group carries the schedule's definition, its signature
and the slot, and an agent about to run a part checks that the group is exactly the
signed schedule's fleet run of a slot the schedule has.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schedagent.core import fleet
from schedagent.core.fleet import Group, Target
from schedagent.core.schedule import Schedule
from schedagent.core.signing import SignatureRejected, verify_schedule
from schedagent.errors import SpecError


def slot_group_id(schedule: str, slot: int) -> str:
    """The group id of a fleet schedule's slot: the slot's millisecond clock (so its
    parts' ids sort by time, as every job's do) and 32 bits of a hash of (schedule,
    slot), so every leader derives the same one."""
    digest = hashlib.sha256(f"schedule-fleet\0{schedule}\0{slot}".encode()).hexdigest()
    return f"g-{(slot * 1000) & 0xFFFFFFFFFFFF:012x}{digest[:8]}"


def group_definition(schedule: Schedule, slot: int) -> fleet.Definition:
    """The fleet run a slot makes: the schedule's job (less where: the selector says),
    its selector and policy, under the slot's group id."""
    definition = schedule.definition
    if definition.fleet is None:
        raise SignatureRejected(f"schedule {schedule.name} is not a fleet schedule")
    job = {name: definition.job[name] for name in fleet.JOB_FIELDS}
    raw = {"id": slot_group_id(schedule.name, slot), "job": job, **definition.fleet}
    return fleet.parse_definition(raw, 1 << 30)


def slot_group(schedule: Schedule, slot: int, targets: Sequence[Target], now: float) -> Group:
    """The group record of a slot, with the hosts that match now as its targets."""
    origin = {"name": schedule.name, "slot": slot, "definition": schedule.definition.to_dict()}
    definition = group_definition(schedule, slot)
    return Group(definition, schedule.signature, now, tuple(targets), schedule=origin)


@dataclasses.dataclass(frozen=True)
class SlotCheck:
    """A slot's group that passed: who signed its schedule, and the slot."""

    key_id: str
    slot: int


def verify_slot_group(group: Group, trusted: Mapping[str, Ed25519PublicKey]) -> SlotCheck:
    """Whether the group is exactly its signed schedule's fleet run of one of its slots;
    SignatureRejected saying why not."""
    origin = group.schedule
    if origin is None:
        raise SignatureRejected("not a schedule's fleet run")
    try:
        schedule = Schedule.from_dict(
            {"definition": origin["definition"], "signature": group.signature.to_dict()}
        )
    except SpecError as exc:
        raise SignatureRejected(f"the fleet run's schedule is malformed: {exc}") from None
    key = verify_schedule(schedule.definition.to_dict(), schedule.signature, trusted)
    slot = int(origin["slot"])
    if origin["name"] != schedule.name:
        raise SignatureRejected("the fleet run names another schedule than its definition")
    if slot <= schedule.starts_at or not schedule.definition.slots().is_slot(slot):
        raise SignatureRejected(f"{slot} is not a slot of schedule {schedule.name}")
    if group.definition != group_definition(schedule, slot):
        raise SignatureRejected(
            f"the fleet run is not schedule {schedule.name}'s fleet run of slot {slot}"
        )
    return SlotCheck(key, slot)
