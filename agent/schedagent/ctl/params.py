"""schedctl's argument types and checks: a bad argument is a usage error naming it."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import click

from schedagent.core.model import JOB_ID_RE
from schedagent.core.sizes import memory_limit
from schedagent.core.spec import MAX_PARENTS, USER_RE

PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

if TYPE_CHECKING:
    # Only recent click releases make ParamType generic; older ones cannot be subscripted.
    FloatParam = click.ParamType[float, Any]
    PairParam = click.ParamType[tuple[str, str], Any]
    StrParam = click.ParamType[str, Any]
    IdsParam = click.ParamType[tuple[str, ...], Any]
    IntParam = click.ParamType[int, Any]
else:
    FloatParam = PairParam = StrParam = IdsParam = IntParam = click.ParamType


class PositiveNumber(FloatParam):
    name = "number"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0 or number > 1e9:
            self.fail(f"must be a number > 0 (and at most 1e9), got {value!r}", param, ctx)
        return number


DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(FloatParam):
    """Seconds, or a number with s, m, h or d: 90, 90s, 5m, 1.5h, 1d."""

    name = "DURATION"

    def __init__(self, zero: bool = False) -> None:
        self.zero = zero

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        match = DURATION_RE.match(str(value).strip())
        if match is None:
            self.fail(f"{value!r} is not a duration (e.g. 30s, 5m, 2h, 1d)", param, ctx)
        seconds = float(match[1]) * UNITS[match[2]]
        if seconds <= 0 and not self.zero:
            self.fail("must be longer than 0", param, ctx)
        return seconds


class MemorySize(IntParam):
    """A size such as 64M or 1.5G (binary units), or bytes: the bytes."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return memory_limit(value if isinstance(value, int) else str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class KeyValue(PairParam):
    name = "KEY=VALUE"

    def __init__(self, key_re: re.Pattern[str] | None = None) -> None:
        self.key_re = key_re

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        if not sep or not key:
            self.fail(f"expected KEY=VALUE, got {value!r}", param, ctx)
        if self.key_re is not None and not self.key_re.match(key):
            self.fail(f"{key!r} is not a valid variable name", param, ctx)
        if "\0" in val:
            self.fail(f"value of {key!r} holds a NUL byte", param, ctx)
        return key, val


class JobId(StrParam):
    name = "JOB"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        job = str(value).strip().lower()
        if not JOB_ID_RE.match(job):
            self.fail(f"{value!r} is not a job id (20 hex digits)", param, ctx)
        return job


class CommaList(IdsParam):
    """Comma-separated items, each checked against `pattern` (a list given twice, as a
    tuple already, passes as it is)."""

    pattern: re.Pattern[str]
    what: str  # how the error names a wrong item: "a job id (20 hex digits)"
    unique = False  # each item once, in the order given

    def item(self, part: str) -> str:
        return part.strip()

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        items = tuple(self.item(part) for part in str(value).split(","))
        if self.unique:
            items = tuple(dict.fromkeys(items))
        for item in items:
            if not self.pattern.match(item):
                self.fail(f"{item!r} is not {self.what}", param, ctx)
        return items


class JobIds(CommaList):
    """ID[,ID...]: job ids, comma-separated."""

    name = "ID[,ID...]"
    pattern = JOB_ID_RE
    what = "a job id (20 hex digits)"

    def item(self, part: str) -> str:
        return part.strip().lower()


def parent_list(ctx: click.Context, param: click.Parameter, value: Any) -> list[str]:
    """Every --after, in the order given, each id once; at most MAX_PARENTS."""
    ids = list(dict.fromkeys(job for group in value for job in group))
    if len(ids) > MAX_PARENTS:
        raise click.BadParameter(f"names {len(ids)} jobs; at most {MAX_PARENTS}")
    return ids


def check_cmd(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (not value.strip() or "\0" in value):
        raise click.BadParameter("must be a non-empty command with no NUL byte")
    return value


def check_user(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not USER_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a user name")
    return value


def check_cwd(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise click.BadParameter(f"must be an absolute path on the node, got {value!r}")
    return value


def check_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= 256:
        raise click.BadParameter("must be 1 to 256 characters")
    return value


def check_prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not PREFIX_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a NATS subject prefix")
    return value
