"""Job and node records: their states and JSON form, and how a command ended."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from schedagent.core import decoding

SCHEMA_VERSION = 1
JOB_ID_RE = re.compile(r"^[0-9a-f]{20}$")


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    @property
    def holds_cpus(self) -> bool:
        return self in (JobState.ASSIGNED, JobState.RUNNING)


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELED}
)


@dataclasses.dataclass(frozen=True)
class JobSpec:
    cmd: str
    cpus: float = 1.0
    timeout: float | None = None
    retries: int = 0
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | None = None
    node: str | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    idempotency_key: str | None = None
    user: str | None = None
    signature: Mapping[str, Any] | None = None
    after: tuple[str, ...] = ()  # ids of the jobs that must SUCCEED before this one runs
    memory: int | None = None  # bytes the job may use (its cgroup's limit; no swap)
    tasks: int | None = None  # processes and threads the job may have at once
    # Fields of a newer version this one does not know: kept, and written back.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "user": self.user,
            "signature": None if self.signature is None else dict(self.signature),
            "cmd": self.cmd,
            "cpus": self.cpus,
            "timeout": self.timeout,
            "retries": self.retries,
            "env": dict(self.env),
            "cwd": self.cwd,
            "node": self.node,
            "labels": dict(self.labels),
            "idempotency_key": self.idempotency_key,
            "after": list(self.after),
            # Only when set: a record without limits reads as it did before the fields.
            **({} if self.memory is None else {"memory": self.memory}),
            **({} if self.tasks is None else {"tasks": self.tasks}),
        }


@dataclasses.dataclass
class Attempt:
    """One try of a job on one node; its end fields are filled when it ends."""

    n: int
    node: str
    assigned_at: float
    started_at: float | None = None
    ended_at: float | None = None
    state: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    lease: int | None = None  # the etcd lease of the agent incarnation that started it
    usage: dict[str, float] | None = None  # what it used, from its cgroup (once ended)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = vars(self).copy()
        if data["usage"] is None:
            del data["usage"]  # most attempts have none: their records stay as they were
        extra = data.pop("extra")
        return {**extra, **data} if extra else data


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one run of a command ended, as the runner saw it."""

    started_at: float
    ended_at: float
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    canceled: bool = False
    error: str | None = None
    usage: Mapping[str, float] | None = None  # from its cgroup: cpu_seconds, memory_peak, ...


@dataclasses.dataclass
class Job:
    id: str
    spec: JobSpec
    state: JobState
    submitted_at: float
    attempt: int = 1
    node: str | None = None
    pid: int | None = None
    not_before: float = 0.0
    cancel_requested: bool = False
    exit_code: int | None = None
    reason: str | None = None
    output_tail: str = ""
    updated_at: float = 0.0
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def current_attempt(self) -> Attempt | None:
        for attempt in reversed(self.attempts):
            if attempt.n == self.attempt:
                return attempt
        return None

    def to_dict(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies and costs a third of a pass.
        data = {name: getattr(self, name) for name in _JOB_SCALARS}
        data["spec"] = self.spec.to_dict()
        data["state"] = str(self.state)
        data["attempts"] = [a.to_dict() for a in self.attempts]
        data["v"] = SCHEMA_VERSION
        return {**self.extra, **data} if self.extra else data

    def clone(self) -> Job:
        """A copy whose attempts can be changed without touching this record."""
        return dataclasses.replace(self, attempts=[dataclasses.replace(a) for a in self.attempts])

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: object) -> Job:
        """The job in a decoded record; ValueError if it is not one.

        Fields this version does not know are kept in `extra` (and written back), so a
        record from a newer version is still placed, run and finished here.
        """
        values, extra = decoding.split(data, "job record", _JOB_CHECKS, _JOB_REQUIRED)
        extra.pop("v", None)
        spec, spec_extra = decoding.split(values["spec"], "job spec", _SPEC_CHECKS, _SPEC_REQUIRED)
        if "after" in spec:
            spec["after"] = _parent_ids(spec["after"])
        values["spec"] = JobSpec(**spec, extra=spec_extra)
        values["state"] = JobState(values["state"])
        values["attempts"] = [_attempt_from(a) for a in values.get("attempts", ())]
        return cls(**values, extra=extra)

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        """ValueError for anything but a job record (not JSON, not UTF-8, not an object)."""
        return cls.from_dict(json.loads(raw))


def _parent_ids(after: Sequence[object]) -> tuple[str, ...]:
    ids = tuple(p for p in after if isinstance(p, str) and JOB_ID_RE.match(p))
    if len(ids) != len(after):
        raise ValueError("job spec: after must hold job ids")
    return ids


def _attempt_from(data: object) -> Attempt:
    values, extra = decoding.split(data, "attempt", _ATTEMPT_CHECKS, _ATTEMPT_REQUIRED)
    return Attempt(**values, extra=extra)


_NO_EXTRA = frozenset({"extra"})
_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job))
_JOB_SCALARS = tuple(sorted(_JOB_FIELDS - {"spec", "state", "attempts", "extra"}))
_JOB_CHECKS = decoding.field_checks(Job, _NO_EXTRA)
_JOB_REQUIRED = decoding.required_fields(Job)
_SPEC_CHECKS = decoding.field_checks(JobSpec, _NO_EXTRA)
_SPEC_REQUIRED = decoding.required_fields(JobSpec)
_ATTEMPT_CHECKS = decoding.field_checks(Attempt, _NO_EXTRA)
_ATTEMPT_REQUIRED = decoding.required_fields(Attempt)


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """What an agent publishes about itself under its lease."""

    name: str
    hostname: str
    cpus: float
    memory_total: int
    memory_available: int
    load: tuple[float, float, float]
    labels: Mapping[str, str]
    version: str
    started_at: float
    lease: int
    addresses: tuple[str, ...] = ()
    draining: bool = False
    used_cpus: float = 0.0
    running_jobs: int = 0

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["v"] = SCHEMA_VERSION
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeRecord:
        """ValueError for anything but a node record; fields it does not know are skipped
        (only the node itself writes its record)."""
        values, _ = decoding.split(json.loads(raw), "node record", _NODE_CHECKS, _NODE_REQUIRED)
        load = tuple(values.get("load", (0.0, 0.0, 0.0)))
        if len(load) != 3 or not all(decoding.is_number(x) for x in load):
            raise ValueError("node record: load must be three numbers")
        values["load"] = load
        addresses = tuple(values.get("addresses", ()))
        if not all(isinstance(a, str) for a in addresses):
            raise ValueError("node record: addresses must be strings")
        values["addresses"] = addresses
        return cls(**values)


_NODE_CHECKS = decoding.field_checks(NodeRecord)
_NODE_REQUIRED = decoding.required_fields(NodeRecord)


def new_job_id(now: float | None = None) -> str:
    """A 20-hex-digit id that sorts by submit time (48-bit ms clock + 32 random bits)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFFFFFFFFFF
    return f"{ms:012x}{os.urandom(4).hex()}"
