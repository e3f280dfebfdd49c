"""Job and node records: their states and JSON form, and how a command ended."""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import time
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

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


class JobSpec(
    msgspec.Struct, decoding.KeepsExtra, frozen=True, forbid_unknown_fields=True, dict=True
):
    cmd: str
    cpus: float = 1.0
    timeout: float | None = None
    retries: int = 0
    env: Mapping[str, str] = {}
    cwd: str | None = None
    node: str | None = None
    labels: Mapping[str, str] = {}
    idempotency_key: str | None = None
    user: str | None = None
    signature: Mapping[str, Any] | None = None
    # ids of the jobs that must SUCCEED before this one runs
    after: tuple[Annotated[str, msgspec.Meta(pattern=JOB_ID_RE.pattern)], ...] = ()
    # A schedule's run: its name, slot, signed definition and signature (core/schedule.py).
    schedule: Mapping[str, Any] | None = None
    # A fleet run's part: its group, host, signed definition and signature (core/fleet.py).
    fleet: Mapping[str, Any] | None = None
    memory: int | None = None  # bytes the job may use (its cgroup's limit; no swap)
    tasks: int | None = None  # processes and threads the job may have at once

    def to_dict(self) -> dict[str, Any]:
        data = self.merged(msgspec.to_builtins(self))
        data["after"] = list(self.after)
        # Absent, not null, when not set: an older agent refuses a field it does not know.
        for optional in ("schedule", "fleet", "memory", "tasks"):
            if data[optional] is None:
                del data[optional]
        return data


class Attempt(msgspec.Struct, decoding.KeepsExtra, forbid_unknown_fields=True, dict=True):
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

    def to_dict(self) -> dict[str, Any]:
        data = self.merged(msgspec.to_builtins(self))
        if data["usage"] is None:
            del data["usage"]  # most attempts have none
        return data

    def copy(self) -> Attempt:
        copied = msgspec.structs.replace(self)
        copied.keep_extra(self.extra)
        return copied


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


class Job(msgspec.Struct, decoding.KeepsExtra, forbid_unknown_fields=True, dict=True):
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
    output_tail: str = ""  # the end of its output when that is UTF-8 text (core/tail.py)
    output_tail_base64: str | None = None  # else the end of its output, base64
    updated_at: float = 0.0
    attempts: list[Attempt] = []
    v: int = SCHEMA_VERSION  # the version of the agent that wrote the record

    def current_attempt(self) -> Attempt | None:
        for attempt in reversed(self.attempts):
            if attempt.n == self.attempt:
                return attempt
        return None

    def to_dict(self) -> dict[str, Any]:
        data = self.merged(msgspec.to_builtins(self))
        data["spec"] = self.spec.merged(data["spec"])
        data["attempts"] = [
            a.merged(d) for a, d in zip(self.attempts, data["attempts"], strict=True)
        ]
        return data

    def clone(self) -> Job:
        """A copy whose attempts can be changed without touching this record."""
        copied = msgspec.structs.replace(self, attempts=[a.copy() for a in self.attempts])
        copied.keep_extra(self.extra)
        return copied

    def to_json(self) -> bytes:
        if self.plain() and self.spec.plain() and all(a.plain() for a in self.attempts):
            return _ENCODER.encode(self)
        return _ENCODER.encode(self.to_dict())

    @classmethod
    def from_dict(cls, data: object) -> Job:
        """The job in a decoded record; ValueError if it is not one.

        Fields this version does not know are kept in `extra` (and written back), so a
        record from a newer version is still placed, run and finished here.
        """
        try:
            job = msgspec.convert(data, cls)
        except msgspec.ValidationError:
            job = _tolerant(data)
        return _as_ours(job)

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        """ValueError for anything but a job record (not JSON, not UTF-8, not an object)."""
        try:
            job = _JOB_DECODER.decode(raw)
        except msgspec.ValidationError:
            # Rare: a newer version's fields (or a bad record); decoded again, untyped.
            job = _tolerant(msgspec.json.decode(raw))
        except msgspec.DecodeError as exc:
            raise ValueError(f"job record: {exc}") from None
        return _as_ours(job)


_ENCODER = msgspec.json.Encoder()
_JOB_DECODER = msgspec.json.Decoder(Job)
_JOB_FIELDS = decoding.field_names(Job)
SPEC_FIELDS = decoding.field_names(JobSpec)
_ATTEMPT_FIELDS = decoding.field_names(Attempt)


def _tolerant(data: object) -> Job:
    """A record with fields this version does not know: each part's are kept beside it."""
    known, extra = decoding.split(data, _JOB_FIELDS)
    spec_extra: dict[str, Any] = {}
    attempt_extras: list[dict[str, Any]] = []
    if isinstance(known, dict):
        if "spec" in known:
            known["spec"], spec_extra = decoding.split(known["spec"], SPEC_FIELDS)
        if isinstance(known.get("attempts"), list):
            parts = [decoding.split(a, _ATTEMPT_FIELDS) for a in known["attempts"]]
            known["attempts"] = [part for part, _ in parts]
            attempt_extras = [unknown for _, unknown in parts]
    job = decoding.convert(known, Job, "job record")
    job.keep_extra(extra)
    job.spec.keep_extra(spec_extra)
    for attempt, unknown in zip(job.attempts, attempt_extras, strict=True):
        attempt.keep_extra(unknown)
    return job


def _as_ours(job: Job) -> Job:
    # Written back, the record says which version wrote it last: this one.
    if job.v != SCHEMA_VERSION:
        job.v = SCHEMA_VERSION
    return job


class NodeRecord(msgspec.Struct, frozen=True):
    """What an agent publishes about itself under its lease. Fields it does not know
    are skipped when decoded: only the node itself writes its record."""

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
    v: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, raw: bytes) -> NodeRecord:
        """ValueError for anything but a node record."""
        try:
            return _NODE_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"node record: {exc}") from None


_NODE_DECODER = msgspec.json.Decoder(NodeRecord)


class KnownHost(msgspec.Struct, frozen=True):
    """A node that has registered at least once, kept without a lease under hosts/: the
    hosts a fleet run's selector is matched against, online or not."""

    name: str
    labels: Mapping[str, str]

    def to_json(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, raw: bytes) -> KnownHost:
        try:
            return _HOST_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"host record: {exc}") from None


_HOST_DECODER = msgspec.json.Decoder(KnownHost)


def new_job_id(now: float | None = None) -> str:
    """A 20-hex-digit id that sorts by submit time (48-bit ms clock + 32 random bits)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFFFFFFFFFF
    return f"{ms:012x}{os.urandom(4).hex()}"
