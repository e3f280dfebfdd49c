"""A submitted job spec: its validation and its limits."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from schedagent.core.model import JOB_ID_RE, SPEC_FIELDS, JobSpec
from schedagent.core.signing import Signature, SignatureRejected
from schedagent.core.sizes import memory_limit, task_limit
from schedagent.errors import SpecError

USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Parents one job may wait for: each is read at submit, and the leader indexes them.
MAX_PARENTS = 64


def parse_spec(raw: object, max_cmd_bytes: int = 65536) -> JobSpec:
    """Validate a submitted spec (a JSON object) and return it; SpecError on any problem."""
    if not isinstance(raw, dict):
        raise SpecError("spec must be a JSON object")
    unknown = sorted(set(raw) - SPEC_FIELDS)
    if unknown:
        raise SpecError(f"unknown spec field(s): {', '.join(unknown)}")
    if raw.get("schedule") is not None:
        raise SpecError("a schedule's runs are made by its leader, not submitted")
    if raw.get("fleet") is not None:
        raise SpecError("a fleet run's parts are made by its leader, not submitted")
    cmd = raw.get("cmd")
    if not isinstance(cmd, str) or not cmd.strip():
        raise SpecError("cmd must be a non-empty string")
    if len(_utf8(cmd, "cmd")) > max_cmd_bytes or "\0" in cmd:
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
        after=parent_ids(raw.get("after")),
        memory=_optional(memory_limit, raw.get("memory"), "memory"),
        tasks=_optional(task_limit, raw.get("tasks"), "tasks"),
    )


def _optional(check: Callable[[object, str], int], value: object, name: str) -> int | None:
    """A limit in bytes or a count; a size string is the client's to convert (it signs
    the number)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise SpecError(f"{name} must be a number, got {value!r}")
    try:
        return check(value, name)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def parent_ids(value: object) -> tuple[str, ...]:
    """The job ids a spec waits for, checked: a list of distinct ids, at most MAX_PARENTS.

    Not put in order or deduplicated: the list is signed as the client sent it.
    """
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SpecError("after must be a list of job ids")
    if len(value) > MAX_PARENTS:
        raise SpecError(f"after names {len(value)} jobs; at most {MAX_PARENTS}")
    for parent in value:
        if not isinstance(parent, str) or not JOB_ID_RE.match(parent):
            raise SpecError(f"after: {parent!r} is not a job id (20 lower-case hex digits)")
    if len(set(value)) != len(value):
        raise SpecError("after names a job more than once")
    return tuple(value)


def _utf8(value: str, name: str) -> bytes:
    """The UTF-8 bytes of a string the OS will be given: a lone surrogate (JSON can
    carry one) cannot be encoded, and would fail only when the job is started."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise SpecError(f"{name} must be valid Unicode text (it holds a lone surrogate)") from None


def _user(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not USER_RE.match(value):
        raise SpecError(f"user must be a user name, got {value!r}")
    return value


def _signature(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
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
        _utf8(v, f"env {k}")
    return env


def _cwd(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise SpecError(f"cwd must be an absolute path, got {value!r}")
    _utf8(value, "cwd")
    return value
