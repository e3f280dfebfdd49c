"""Fleet schedules: the definition, each slot's group, and the agent's check of its parts
(core/schedule.py, core/schedfleet.py, core/fleetrun.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from schedagent.core.fleet import Group, Target, part_job_id
from schedagent.core.fleetrun import verify_part
from schedagent.core.schedfleet import (
    group_definition,
    slot_group,
    slot_group_id,
    verify_slot_group,
)
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SignatureRejected, SigningKey
from schedagent.errors import ScheduleError

KEY, OTHER = SigningKey.generate(), SigningKey.generate()
TRUSTED = {KEY.key_id: KEY.public}
START = 1_699_999_980
SLOT = START + 60  # the first slot of `every: 60` after the signing
HERE = ("web1", {"role": "web"})
FLEET = {"selector": {"all": True}, "policy": {"max_parallel": 1, "canary": 1}}


def make(key: SigningKey = KEY, fleet: dict[str, Any] | None = None, **fields: Any) -> Schedule:
    raw = {"name": "patch", "every": 60, "job": {"cmd": "apt-get -y upgrade"}, **fields}
    raw["fleet"] = FLEET if fleet is None else fleet
    definition = parse_definition(raw)
    return Schedule(definition, key.sign_schedule(definition.to_dict(), now=START))


def group_of(schedule: Schedule, slot: int = SLOT) -> Group:
    return slot_group(schedule, slot, [Target("web1", True), Target("db1", False)], 0.0)


def test_a_fleet_definition_round_trips_and_one_without_signs_as_before() -> None:
    schedule = make(fleet={"selector": {"labels": {"role": "web"}}, "policy": {}})
    again = parse_definition(schedule.definition.to_dict())
    assert again == schedule.definition
    assert again.fleet is not None and again.fleet["policy"]["max_parallel"] is None
    plain = parse_definition({"name": "p", "every": 60, "job": {"cmd": "x"}})
    assert "fleet" not in plain.to_dict()


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"fleet": {"selector": {"all": False}}}, "fleet: selector"),
        ({"fleet": {"selector": {"all": True}, "policy": {"canary": -1}}}, "fleet: canary"),
        ({"fleet": {"selector": {"all": True}, "when": 1}}, "selector and policy"),
        ({"job": {"cmd": "x", "node": "web1"}}, "no node or labels"),
        ({"job": {"cmd": "x", "labels": {"a": "b"}}}, "no node or labels"),
        ({"after": ["other"]}, "after is not supported"),
    ],
)
def test_a_bad_fleet_definition_says_why(fields: dict[str, Any], why: str) -> None:
    raw = {"name": "patch", "every": 60, "job": {"cmd": "x"}, "fleet": FLEET, **fields}
    with pytest.raises(ScheduleError, match=why):
        parse_definition(raw)


def test_a_slot_group_is_derived_from_the_schedule_and_the_slot() -> None:
    schedule = make()
    group = group_of(schedule)
    assert group.id == slot_group_id("patch", SLOT) == group_of(schedule).id
    assert group.id != slot_group_id("patch", SLOT + 60) != slot_group_id("other", SLOT)
    assert int(group.id[2:14], 16) // 1000 == SLOT  # its parts' ids sort by the slot
    assert group.definition.job["cmd"] == "apt-get -y upgrade"
    assert group.definition.selector.all and group.definition.policy.canary == 1
    assert group.signature == schedule.signature
    assert Group.from_json(group.to_json()) == group
    assert verify_slot_group(group, TRUSTED).slot == SLOT


def test_the_parts_of_a_slot_group_pass_with_a_nonce_per_slot_and_host() -> None:
    schedule = make()
    first, second = group_of(schedule), group_of(schedule, SLOT + 60)
    checks = [
        verify_part(part_job_id(g.id, "web1"), g.part_spec("web1"), HERE, TRUSTED)
        for g in (first, second)
    ]
    assert checks[0].key_id == KEY.key_id and checks[0].fresh_from == SLOT
    assert checks[0].nonce != checks[1].nonce  # each slot may run once on each host
    assert checks[0].nonce.endswith(".web1")


def _altered(schedule: Schedule) -> dict[str, Group]:
    """name -> a slot group a leader (or anyone writing etcd) might forge."""
    good = group_of(schedule)
    assert good.schedule is not None
    origin = dict(good.schedule)
    evil_def = {**origin["definition"], "job": {**origin["definition"]["job"], "cmd": "evil"}}
    evil_cmd = dataclasses.replace(
        good.definition, job={**good.definition.job, "cmd": "evil"}, id=good.id
    )
    policy = dataclasses.replace(
        good.definition, policy=dataclasses.replace(good.definition.policy, max_parallel=None)
    )
    stranger = make(key=OTHER)
    not_slot = slot_group(schedule, SLOT + 1, good.targets, 0.0)
    before = slot_group(schedule, START - 60, good.targets, 0.0)
    return {
        "cmd": dataclasses.replace(good, definition=evil_cmd),
        "policy": dataclasses.replace(good, definition=policy),
        "schedule-altered": dataclasses.replace(good, schedule={**origin, "definition": evil_def}),
        "other-slot": dataclasses.replace(good, schedule={**origin, "slot": SLOT + 60}),
        "not-a-slot": not_slot,
        "before-signing": before,
        "renamed": dataclasses.replace(good, schedule={**origin, "name": "other"}),
        "unknown-key": group_of(stranger),
        "no-schedule": dataclasses.replace(good, schedule=None),
    }


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("cmd", "is not schedule patch's fleet run of slot"),
        ("policy", "is not schedule patch's fleet run of slot"),
        ("schedule-altered", "does not match"),
        ("other-slot", "is not schedule patch's fleet run of slot"),
        ("not-a-slot", "is not a slot of schedule"),
        ("before-signing", "is not a slot of schedule"),
        ("renamed", "names another schedule"),
        ("unknown-key", "unknown key"),
        ("no-schedule", "does not match"),
    ],
)
def test_a_forged_or_altered_slot_group_is_refused(case: str, why: str) -> None:
    group = _altered(make())[case]
    with pytest.raises(SignatureRejected, match=why):
        verify_part(part_job_id(group.id, "web1"), group.part_spec("web1"), HERE, TRUSTED)


def test_a_slot_groups_part_must_still_be_its_job_on_a_host_the_selector_admits() -> None:
    web = make(fleet={"selector": {"labels": {"role": "db"}}, "policy": {}})
    group = group_of(web)
    with pytest.raises(SignatureRejected, match="outside the fleet run's selector"):
        verify_part(part_job_id(group.id, "web1"), group.part_spec("web1"), HERE, TRUSTED)
    good = group_of(make())
    spec = msgspec.structs.replace(good.part_spec("web1"), cmd="evil")
    with pytest.raises(SignatureRejected, match="not the signed fleet run's job"):
        verify_part(part_job_id(good.id, "web1"), spec, HERE, TRUSTED)


def test_a_plain_schedule_makes_no_group() -> None:
    plain = Schedule(
        parse_definition({"name": "p", "every": 60, "job": {"cmd": "x"}}),
        KEY.sign_schedule(
            parse_definition({"name": "p", "every": 60, "job": {"cmd": "x"}}).to_dict()
        ),
    )
    with pytest.raises(SignatureRejected, match="not a fleet schedule"):
        group_definition(plain, SLOT)
