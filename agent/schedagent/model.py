"""Job and node records: their states, JSON form and the validation of a submitted spec."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from .errors import SpecError

SCHEMA_VERSION = 1
JOB_ID_RE = re.compile(r"^[0-9a-f]{20}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def parse_spec(raw: object, max_cmd_bytes: int = 65536) -> JobSpec:
    """Validate a submitted spec (a JSON object) and return it; SpecError on any problem."""
    if not isinstance(raw, dict):
        raise SpecError("spec must be a JSON object")
    known = {f.name for f in dataclasses.fields(JobSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"unknown spec field(s): {', '.join(unknown)}")
    cmd = raw.get("cmd")
    if not isinstance(cmd, str) or not cmd.strip():
        raise SpecError("cmd must be a non-empty string")
    if len(cmd.encode()) > max_cmd_bytes or "\0" in cmd:
        raise SpecError(f"cmd must be at most {max_cmd_bytes} bytes with no NUL byte")
    return JobSpec(
        cmd=cmd,
        cpus=_positive(raw.get("cpus", 1), "cpus"),
        timeout=None if raw.get("timeout") is None else _positive(raw["timeout"], "timeout"),
        retries=_retries(raw.get("retries", 0)),
        env=_env({} if raw.get("env") is None else raw["env"]),
        cwd=_cwd(raw.get("cwd")),
        node=_optional_str(raw.get("node"), "node"),
        labels=_str_map({} if raw.get("labels") is None else raw["labels"], "labels"),
        idempotency_key=_optional_str(raw.get("idempotency_key"), "idempotency_key"),
        user=_user(raw.get("user")),
        signature=_signature(raw.get("signature")),
    )


def _user(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not USER_RE.match(value):
        raise SpecError(f"user must be a user name, got {value!r}")
    return value


def _signature(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    from .signing import Signature, SignatureRejected

    try:
        return Signature.from_dict(value).to_dict()
    except SignatureRejected as exc:
        raise SpecError(str(exc)) from None


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise SpecError(f"{name} must be a number > 0, got {value!r}")
    if value > 1e9:
        raise SpecError(f"{name} is too large: {value!r}")
    return float(value)


def _retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise SpecError(f"retries must be an integer from 0 to 100, got {value!r}")
    return value


def _optional_str(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise SpecError(f"{name} must be a non-empty string of at most 256 characters")
    return value


def _str_map(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise SpecError(f"{name} must be an object of strings")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SpecError(f"{name}: {k!r} must map a string to a string")
    return dict(value)


def _env(value: object) -> dict[str, str]:
    env = _str_map(value, "env")
    for k, v in env.items():
        if not ENV_NAME_RE.match(k) or "\0" in v:
            raise SpecError(f"env: {k!r} is not a valid variable name or holds a NUL byte")
    return env


def _cwd(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise SpecError(f"cwd must be an absolute path, got {value!r}")
    return value
