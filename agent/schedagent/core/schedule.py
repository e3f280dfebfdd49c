"""A schedule: its signed definition, its record in etcd, and the jobs of its slots."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from schedagent.core.fleet import parse_policy, parse_selector
from schedagent.core.model import JobSpec
from schedagent.core.signing import Signature, SignatureRejected
from schedagent.core.slots import Slots, slot_job_id, splay_delay
from schedagent.core.spec import MAX_PARENTS, parse_spec
from schedagent.errors import FleetError, ScheduleError, SpecError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONCURRENCY = ("forbid", "replace", "allow")
CATCH_UP = ("none", "one", "all")
DEFAULT_WINDOW = 3600.0
MAX_SECONDS = 366 * 86400.0
# The job fields a schedule fixes (what a job's signature covers, less nothing).
JOB_FIELDS = ("cmd", "cpus", "cwd", "env", "labels", "node", "retries", "timeout", "user")
DEFINITION_FIELDS = frozenset(
    {
        "name",
        "cron",
        "tz",
        "every",
        "job",
        "concurrency",
        "catch_up",
        "catch_up_window",
        "splay",
        "after",
        "fleet",
    }
)


@dataclasses.dataclass(frozen=True)
class Definition:
    """What an operator signs: the job, when it runs, and the policies."""

    name: str
    job: Mapping[str, Any]
    cron: str | None = None
    tz: str = "UTC"
    every: int | None = None
    concurrency: str = "forbid"
    catch_up: str = "one"
    catch_up_window: float = DEFAULT_WINDOW
    splay: float = 0.0
    after: tuple[str, ...] = ()  # schedules whose run of a slot must SUCCEED first
    # A fleet schedule's hosts and roll-out: {"selector": ..., "policy": ...} as a fleet
    # run signs them (core/fleet.py); each slot is one fleet run (core/schedfleet.py).
    fleet: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The definition as it is signed. `after` and `fleet` only when set, so a
        schedule without them signs as it did before they existed (and still verifies)."""
        data = dataclasses.asdict(self)
        data["job"] = dict(self.job)
        if self.after:
            data["after"] = list(self.after)
        else:
            del data["after"]
        if self.fleet is None:
            del data["fleet"]
        return data

    def parent_runs(self, slot: int) -> tuple[str, ...]:
        """The job ids slot's run waits for: each parent schedule's run of the same slot."""
        return tuple(slot_job_id(parent, slot) for parent in self.after)

    def slots(self) -> Slots:
        return Slots(self.cron, self.tz, self.every)

    def due(self, slot: int) -> float:
        """When the slot fires: its time plus its splay."""
        return slot + splay_delay(self.name, slot, self.splay)


def parse_definition(raw: object, max_cmd_bytes: int = 65536) -> Definition:
    """A valid definition, normalised as it is signed; ScheduleError (a SpecError) if not."""
    if not isinstance(raw, dict):
        raise ScheduleError("a schedule definition must be a JSON object")
    unknown = sorted(set(raw) - DEFINITION_FIELDS)
    if unknown:
        raise ScheduleError(f"unknown schedule field(s): {', '.join(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ScheduleError(f"name must be 1-128 of A-Z a-z 0-9 _ . - (got {name!r})")
    cron, every = raw.get("cron"), raw.get("every")
    if cron is not None and not isinstance(cron, str):
        raise ScheduleError("cron must be a string")
    if every is not None and (
        isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= MAX_SECONDS
    ):
        raise ScheduleError(f"every must be whole seconds from 1 to {MAX_SECONDS:.0f}")
    tz = raw.get("tz", "UTC")
    if not isinstance(tz, str):
        raise ScheduleError("tz must be an IANA zone name")
    if every is not None and tz != "UTC":
        raise ScheduleError("tz applies to cron only (every is aligned to the epoch)")
    definition = Definition(
        name=name,
        job=_job(raw.get("job"), max_cmd_bytes),
        cron=cron,
        tz=tz,
        every=every,
        concurrency=_choice(raw.get("concurrency", "forbid"), "concurrency", CONCURRENCY),
        catch_up=_choice(raw.get("catch_up", "one"), "catch_up", CATCH_UP),
        catch_up_window=_seconds(raw.get("catch_up_window", DEFAULT_WINDOW), "catch_up_window"),
        splay=_seconds(raw.get("splay", 0.0), "splay", zero=True),
        after=_parents(raw.get("after"), name),
        fleet=_fleet(raw.get("fleet")),
    )
    definition.slots()  # the cron expression and the zone, checked
    if definition.fleet is not None:
        _check_fleet_job(definition)
    return definition


def _fleet(raw: object) -> dict[str, Any] | None:
    """A fleet schedule's selector and policy, normalised as a fleet run signs them."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not set(raw) <= {"selector", "policy"}:
        raise ScheduleError("fleet must be an object with selector and policy")
    try:
        selector, policy = parse_selector(raw.get("selector")), parse_policy(raw.get("policy", {}))
    except FleetError as exc:
        raise ScheduleError(f"fleet: {exc}") from None
    return {"selector": selector.to_dict(), "policy": policy.to_dict()}


def _check_fleet_job(definition: Definition) -> None:
    """The selector says where a fleet schedule runs; no parent waits are built for it."""
    if definition.job["node"] is not None or definition.job["labels"]:
        raise ScheduleError("a fleet schedule's hosts are its selector: no node or labels")
    if definition.after:
        raise ScheduleError("after is not supported for fleet schedules")


def _job(raw: object, max_cmd_bytes: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScheduleError("job must be a JSON object with the job's fields")
    extra = sorted(set(raw) - set(JOB_FIELDS))
    if extra:
        raise ScheduleError(f"a schedule's job has no field(s) {', '.join(extra)}")
    try:
        spec = parse_spec(raw, max_cmd_bytes)
    except SpecError as exc:
        raise ScheduleError(f"job: {exc}") from None
    return job_fields(spec)


def job_fields(spec: JobSpec) -> dict[str, Any]:
    """The fields of a job that a schedule fixes, as it signs them."""
    data = spec.to_dict()
    return {name: data[name] for name in JOB_FIELDS}


def _parents(raw: object, name: str) -> tuple[str, ...]:
    """The schedules named by after: a list of distinct names, not this one's, in the
    order given (signed as given)."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple) or not all(isinstance(p, str) for p in raw):
        raise ScheduleError("after must be a list of schedule names")
    bad = [p for p in raw if not NAME_RE.match(p)]
    if bad:
        raise ScheduleError(f"after: {bad[0]!r} is not a schedule name")
    if name in raw:
        raise ScheduleError(f"after: schedule {name} cannot wait for itself")
    if len(set(raw)) != len(raw):
        raise ScheduleError("after names a schedule more than once")
    if len(raw) > MAX_PARENTS:
        raise ScheduleError(f"after names {len(raw)} schedules; at most {MAX_PARENTS}")
    return tuple(raw)


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ScheduleError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _seconds(value: object, name: str, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScheduleError(f"{name} must be a number of seconds")
    if not (value >= 0 if zero else value > 0) or value > MAX_SECONDS:
        low = ">= 0" if zero else "> 0"
        raise ScheduleError(f"{name} must be {low} and at most {MAX_SECONDS:.0f} seconds")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A schedule as etcd keeps it: the signed definition, and whether it is paused.

    `changed_at` is the signing time of the last pause or resume applied: an action
    signed before it is stale (a replay), so a captured pause cannot undo a resume.
    """

    definition: Definition
    signature: Signature
    paused: bool = False
    changed_at: float = 0.0
    resumed_at: float | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def starts_at(self) -> int:
        """Slots come after the signing: a schedule has none from before it existed."""
        return math.floor(self.signature.signed_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "definition": self.definition.to_dict(),
            "signature": self.signature.to_dict(),
            "paused": self.paused,
            "changed_at": self.changed_at,
            "resumed_at": self.resumed_at,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: object, max_cmd_bytes: int = 1 << 30) -> Schedule:
        """ScheduleError for anything but a schedule record."""
        if not isinstance(data, dict):
            raise ScheduleError("a schedule record must be a JSON object")
        try:
            signature = Signature.from_dict(data.get("signature"))
        except SignatureRejected as exc:
            raise ScheduleError(f"schedule signature: {exc}") from None
        paused, changed, resumed = (
            data.get("paused", False),
            data.get("changed_at", 0.0),
            data.get("resumed_at"),
        )
        if not isinstance(paused, bool) or not _number(changed) or not _number(resumed, True):
            raise ScheduleError("a schedule record's paused/changed_at/resumed_at are malformed")
        definition = parse_definition(data.get("definition"), max_cmd_bytes)
        return cls(definition, signature, paused, float(changed), resumed)

    @classmethod
    def from_json(cls, raw: bytes) -> Schedule:
        """A stored record; ValueError for a malformed one, which the store skips and notes
        (ScheduleError is a SpecError, not a ValueError)."""
        try:
            return cls.from_dict(json.loads(raw))
        except (ValueError, SpecError, SignatureRejected) as exc:
            raise ValueError(str(exc)) from None

    def slot_spec(self, slot: int | None, run: Signature | None = None) -> JobSpec:
        """The job of one slot (or, with run and no slot, of a run outside the schedule):
        the signed job's fields, the runs it waits for (`after`: the parent schedules'
        runs of the slot; none for a run outside the schedule), and the schedule's
        definition and signature for the running agent to check."""
        origin: dict[str, Any] = {
            "name": self.name,
            "slot": slot,
            "definition": self.definition.to_dict(),
            "signature": self.signature.to_dict(),
            "run": None if run is None else run.to_dict(),
        }
        after = () if slot is None else self.definition.parent_runs(slot)
        spec = parse_spec(dict(self.definition.job))
        return msgspec.structs.replace(spec, schedule=origin, after=after)

    def slot_job_id(self, slot: int) -> str:
        return slot_job_id(self.name, slot)


def _number(value: object, optional: bool = False) -> bool:
    if value is None:
        return optional
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
