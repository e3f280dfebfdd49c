"""The options that say which hosts and how to roll out: `run` and `schedule create`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from schedagent.core.fleet import HOST_RE, PERCENT_RE
from schedagent.ctl.jobopts import Command, job_fields
from schedagent.ctl.params import CommaList, Duration, StrParam


class Count(StrParam):
    """N hosts, or P% of the targets."""

    name = "N|P%"

    def __init__(self, low: int) -> None:
        self.low = low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        raw = str(value).strip()
        if PERCENT_RE.match(raw) and 0 < int(raw[:-1]) <= 100:
            return raw
        if raw.isdigit() and int(raw) >= self.low:
            return int(raw)
        self.fail(f"{value!r}: a number of hosts ({self.low} or more) or a share 1%-100%")


class NodeNames(CommaList):
    name = "NODE[,NODE...]"
    pattern = HOST_RE
    what = "a node name"
    unique = True


SELECTOR_OPTIONS: list[Callable[[Command], Command]] = [
    click.option("--all", "select_all", is_flag=True, help="Every known host."),
    click.option("--nodes", type=NodeNames(), help="These hosts (known or not)."),
]

POLICY_OPTIONS: list[Callable[[Command], Command]] = [
    click.option("--max-parallel", type=Count(1), help="Hosts at once (default: all)."),
    click.option(
        "--max-failures",
        type=Count(0),
        help="Stop starting hosts once more than this failed (default: 0 with "
        "--max-parallel, else no limit).",
    ),
    click.option(
        "--batch-wait",
        type=Duration(zero=True),
        default=0.0,
        help="Wait this long after a host ends before its slot starts another.",
    ),
    click.option(
        "--canary",
        type=click.IntRange(0, 10000),
        default=0,
        help="The first N hosts alone; the rest only if they all succeeded.",
    ),
    click.option(
        "--offline-wait",
        type=Duration(zero=True),
        default=0.0,
        help="How long an offline host may take to come back (from acceptance).",
    ),
]


def fleet_job(options: dict[str, Any]) -> dict[str, Any]:
    """The job's fields less where it runs (the selector says)."""
    fields = job_fields(options)
    if fields.pop("node") is not None:
        raise click.UsageError("--node pins one job; a fleet run takes --nodes A,B,...")
    fields.pop("labels")  # --label selects the hosts
    return fields


def selector(options: dict[str, Any]) -> dict[str, Any]:
    labels, nodes, everything = dict(options["labels"]), options["nodes"], options["select_all"]
    if sum(map(bool, (labels, nodes, everything))) != 1:
        raise click.UsageError("give one of --all, --label K=V (one or more), --nodes A,B")
    if everything:
        return {"all": True}
    return {"labels": labels} if labels else {"nodes": list(nodes)}


def policy(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "max_parallel": options["max_parallel"],
        "max_failures": options["max_failures"],
        "batch_wait": options["batch_wait"],
        "canary": options["canary"],
        "offline_wait": options["offline_wait"],
    }


def policy_given(options: dict[str, Any]) -> bool:
    """Whether any roll-out option differs from its default."""
    return policy(options) != {
        "max_parallel": None,
        "max_failures": None,
        "batch_wait": 0.0,
        "canary": 0,
        "offline_wait": 0.0,
    }
