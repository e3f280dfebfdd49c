"""`schedctl run`: one command on every matching host, rolled out with a failure budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from schedagent.core.fleet import GROUP_ID_RE, parse_definition
from schedagent.core.model import new_job_id
from schedagent.ctl.client import Client, CtlError, Record, field
from schedagent.ctl.command import json_option, print_json, run
from schedagent.ctl.fleetopts import POLICY_OPTIONS, SELECTOR_OPTIONS, fleet_job, policy, selector
from schedagent.ctl.fleetview import exit_status, follow_group, format_group, summary_line
from schedagent.ctl.jobopts import Command, cmd_option, job_options
from schedagent.ctl.params import StrParam
from schedagent.ctl.schedules import operator_key
from schedagent.errors import FleetError

RETRYABLE = ("failed", "unreachable", "skipped", "canceled")


class GroupId(StrParam):
    name = "GROUP"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        group = str(value).strip().lower()
        if not GROUP_ID_RE.match(group):
            self.fail(f"{value!r} is not a fleet run id (g- and 20 hex digits)", param, ctx)
        return group


def _only(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    picked = tuple(part.strip() for part in value.split(",") if part.strip())
    bad = [p for p in picked if p not in RETRYABLE]
    if bad or not picked:
        raise click.BadParameter(f"a comma-separated list of {', '.join(RETRYABLE)}")
    return picked


def _options(command: Command) -> Command:
    decorators: list[Callable[[Command], Command]] = [
        cmd_option,
        *SELECTOR_OPTIONS,
        job_options,
        *POLICY_OPTIONS,
        click.option(
            "--retry",
            "retry_group",
            type=GroupId(),
            help="A new run of GROUP's command on its hosts with the --only results.",
        ),
        click.option(
            "--only",
            default="failed,unreachable",
            show_default=True,
            callback=_only,
            help=f"With --retry: the results to run again ({', '.join(RETRYABLE)}).",
        ),
        click.option(
            "--wait",
            is_flag=True,
            help="Stream `host: line`, print the summary, exit 0 only if all succeeded.",
        ),
        json_option,
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


@click.command(name="run")
@_options
def run_fleet(**options: Any) -> None:
    """Run a command on every matching host (--all, --label K=V, or --nodes A,B);
    print the fleet run's id (GROUP: see `status GROUP`, `cancel GROUP`)."""
    key = operator_key()
    if options["retry_group"] is None:
        fixed = _definition(
            selector(options), {"cmd": _cmd(options), **fleet_job(options)}, options
        )
    else:
        fixed = None

    async def work(client: Client) -> int:
        definition = fixed if fixed is not None else await _retry_definition(client, options)
        signature = key.sign_group(definition).to_dict()
        body = {"group": {"definition": definition, "signature": signature}}
        reply = await client.call("fleet_create", body)
        group = field(reply, "group", dict)
        wait = options["wait"]
        if options["as_json"] and not wait:
            print_json(reply)
        else:
            click.echo(group.get("id"), err=wait)
        if not wait:
            return 0
        final = await follow_group(client, str(group.get("id")))
        if options["as_json"]:
            print_json(final)
        else:
            click.echo(summary_line(final))
        return exit_status(field(final, "counts", dict))

    run(work)


def _cmd(options: dict[str, Any]) -> str:
    if options["cmd"] is None:
        raise click.UsageError("give --cmd (or --retry GROUP)")
    return str(options["cmd"])


def _definition(
    selector: dict[str, Any], job: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    raw = {"id": f"g-{new_job_id()}", "job": job, "selector": selector, "policy": policy(options)}
    try:
        return parse_definition(raw).to_dict()
    except FleetError as exc:
        raise click.UsageError(str(exc)) from None


async def _retry_definition(client: Client, options: dict[str, Any]) -> dict[str, Any]:
    """The old group's job on its hosts with the --only results, the policy given now."""
    given = [options["cmd"], options["select_all"], options["nodes"], options["labels"]]
    if any(given):
        raise CtlError("--retry runs GROUP's own command on its hosts: no --cmd or selector", 2)
    old: Record = await client.call("fleet_get", {"id": options["retry_group"]})
    hosts = [
        str(row["host"])
        for row in field(old, "hosts", list)
        if row.get("result") in options["only"]
    ]
    if not hosts:
        raise CtlError(f"no host of {options['retry_group']} is {' or '.join(options['only'])}")
    job = field(field(old, "group", dict), "definition", dict).get("job")
    return _definition({"nodes": hosts}, dict(job or {}), options)


def show_group(group_id: str, as_json: bool) -> None:
    """`status GROUP`: the per-host table and the summary line."""

    async def work(client: Client) -> int:
        reply = await client.call("fleet_get", {"id": group_id})
        if as_json:
            print_json(reply)
        else:
            click.echo(format_group(reply))
        return 0

    run(work)


def cancel_group(group_id: str, as_json: bool) -> None:
    """`cancel GROUP`: hosts not started are skipped, live parts canceled."""
    key = operator_key()
    body = {"id": group_id, "signature": key.sign_group_cancel(group_id).to_dict()}

    async def work(client: Client) -> int:
        reply = await client.call("fleet_cancel", body)
        if as_json:
            print_json(reply)
        else:
            click.echo(f"fleet run {group_id}: cancel requested")
        return 0

    run(work)
