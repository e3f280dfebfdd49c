"""`schedctl runs`: the fleet runs, newest first (fleet_list), as a table or --json.

A command of its own beside `list` (jobs) and `nodes`, not an option of `run`: `run`
starts a fleet run and every option it has is about that one.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from schedagent.core import rollout
from schedagent.ctl.client import ApiError, Client, CtlError, Record, field
from schedagent.ctl.command import json_option, print_json, run
from schedagent.ctl.format import short, table, text, when

VERB = "fleet_list"
MAX_PER_REQUEST = 500  # the agents' limit on one fleet_list


async def fleet_list(client: Client, limit: int, before: str | None) -> Record:
    """One fleet_list reply; an agent older than the verb is one line saying so."""
    try:
        return await client.call(VERB, {"limit": limit, "before": before})
    except ApiError as exc:
        if unknown_verb(exc, VERB):
            raise CtlError(
                "the agents are older than this schedctl and cannot list fleet runs "
                "(upgrade them; `schedctl status GROUP` reads one run)"
            ) from None
        raise


def unknown_verb(exc: ApiError, verb: str) -> bool:
    """Whether an agent refused the request for not knowing the verb (daemon/api.py)."""
    return exc.code == "bad_request" and str(exc).startswith(f"unknown verb {verb!r}")


async def list_runs(client: Client, limit: int) -> list[Record]:
    """Up to limit runs, newest first, over as many replies as it takes."""
    runs: list[Record] = []
    before = None
    while len(runs) < limit:
        reply = await fleet_list(client, min(limit - len(runs), MAX_PER_REQUEST), before)
        runs.extend(field(reply, "runs", list))
        before = reply.get("next")
        if not isinstance(before, str):
            break
    return runs


def run_summary(entry: Record) -> str:
    """`2 succeeded, 1 failed` once a run has ended; `-` while it rolls out."""
    counts = entry.get("counts")
    if not isinstance(counts, dict):
        return "-"
    return rollout.summary({str(k): int(v) for k, v in counts.items() if isinstance(v, int)})


def selector_text(selector: object, width: int = 40) -> str:
    """Which hosts, as `run` was told: all, K=V labels, or the names (cut to width)."""
    if not isinstance(selector, dict):
        return "-"
    if selector.get("all"):
        return "all"
    if selector.get("nodes"):
        return short(",".join(map(str, selector["nodes"])), width)
    labels = selector.get("labels") or {}
    return short(",".join(f"{k}={v}" for k, v in sorted(labels.items())), width)


def format_runs(runs: Sequence[Record]) -> str:
    if not runs:
        return "no fleet runs"
    rows = [
        [
            text(r.get("id")),
            when(r.get("accepted_at")),
            text(r.get("state")),
            text(r.get("targets")),
            selector_text(r.get("selector")),
            run_summary(r),
            short(r.get("cmd")),
        ]
        for r in runs
    ]
    heads = ["GROUP", "ACCEPTED", "STATE", "HOSTS", "SELECTOR", "SUMMARY", "COMMAND"]
    return table(heads, rows)


@click.command(name="runs")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
def list_fleet_runs(limit: int, as_json: bool) -> None:
    """List fleet runs, newest first: state, hosts and, once ended, the summary
    (`schedctl status GROUP` shows one run's hosts)."""

    async def work(client: Client) -> int:
        runs = await list_runs(client, limit)
        if as_json:
            print_json({"runs": runs})
        else:
            click.echo(format_runs(runs))
        return 0

    run(work)
