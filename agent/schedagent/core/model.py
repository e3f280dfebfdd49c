"""Job and node records: their states and JSON form, and how a command ended."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
        return {
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
        data["attempts"] = [vars(a).copy() for a in self.attempts]
        data["v"] = SCHEMA_VERSION
        return data

    def clone(self) -> Job:
        """A copy whose attempts can be changed without touching this record."""
        return dataclasses.replace(self, attempts=[dataclasses.replace(a) for a in self.attempts])

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        values = {k: v for k, v in data.items() if k in _JOB_FIELDS}
        values["spec"] = JobSpec(**data["spec"])
        values["state"] = JobState(data["state"])
        values["attempts"] = [Attempt(**a) for a in data.get("attempts", [])]
        return cls(**values)

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        return cls.from_dict(json.loads(raw))


_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job))
_JOB_SCALARS = tuple(sorted(_JOB_FIELDS - {"spec", "state", "attempts"}))


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
        data = json.loads(raw)
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["load"] = tuple(values.get("load", (0.0, 0.0, 0.0)))
        values["addresses"] = tuple(values.get("addresses", ()))
        return cls(**values)


def new_job_id(now: float | None = None) -> str:
    """A 20-hex-digit id that sorts by submit time (48-bit ms clock + 32 random bits)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFFFFFFFFFF
    return f"{ms:012x}{os.urandom(4).hex()}"
