"""`schedctl schedule ...`: create, list, show, pause, resume, delete and run schedules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from schedagent.core.schedule import (
    CATCH_UP,
    CONCURRENCY,
    DEFAULT_WINDOW,
    NAME_RE,
    parse_definition,
)
from schedagent.core.signing import SigningKey
from schedagent.ctl.client import Client, Record, field
from schedagent.ctl.command import json_option, print_json, run, show
from schedagent.ctl.fleetopts import (
    POLICY_OPTIONS,
    SELECTOR_OPTIONS,
    fleet_job,
    policy,
    policy_given,
    selector,
)
from schedagent.ctl.format import format_schedule, format_schedules
from schedagent.ctl.jobopts import job_fields, job_options
from schedagent.ctl.keys import find_key
from schedagent.ctl.params import (
    CommaList,
    Duration,
    check_cmd,
)
from schedagent.errors import ScheduleError


class ScheduleNames(CommaList):
    """SCHEDULE[,SCHEDULE...]: schedule names, comma-separated."""

    name = "SCHEDULE[,SCHEDULE...]"
    pattern = NAME_RE
    what = "a schedule name"


def schedule_list(ctx: click.Context, param: click.Parameter, value: Any) -> list[str]:
    """Every --after, in the order given, each name once (the agents check the rest)."""
    return list(dict.fromkeys(name for group in value for name in group))


def check_schedule_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not NAME_RE.match(value):
        raise click.BadParameter(
            f"{value!r}: 1-128 of A-Z a-z 0-9 _ . - (starting with a letter or digit)"
        )
    return value


name_argument = click.argument("name", callback=check_schedule_name)


def _options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of `submit` (the job each slot runs) and the schedule's own."""
    decorators: list[Callable[[Callable[..., None]], Callable[..., None]]] = [
        click.option(
            "--cron", help="5 cron fields, or @hourly, @daily, @weekly, @monthly, @yearly."
        ),
        click.option("--tz", default="UTC", show_default=True, help="IANA time zone of --cron."),
        click.option("--every", type=Duration(), help="Run every DURATION, aligned to the epoch."),
        click.option("--cmd", required=True, callback=check_cmd, help="Shell command to run."),
        *SELECTOR_OPTIONS,
        click.option(
            "--fleet",
            is_flag=True,
            help="Each slot is one fleet run on the hosts --label selects (--all, --nodes "
            "and the roll-out options imply it).",
        ),
        job_options,
        *POLICY_OPTIONS,
        click.option(
            "--concurrency",
            type=click.Choice(CONCURRENCY),
            default="forbid",
            show_default=True,
            help="A slot while the previous run still runs: skip it, cancel the run, or run both.",
        ),
        click.option(
            "--catch-up",
            type=click.Choice(CATCH_UP),
            default="one",
            show_default=True,
            help="Slots missed while no agent led: none, the latest, or all of them.",
        ),
        click.option(
            "--catch-up-window",
            type=Duration(),
            default=DEFAULT_WINDOW,
            help="Slots older than this are never run late (default 1h).",
        ),
        click.option(
            "--after",
            type=ScheduleNames(),
            multiple=True,
            callback=schedule_list,
            help="Run each slot only after these schedules' runs of the same slot SUCCEEDED; "
            "if one did not, the slot's run ends CANCELED without running.",
        ),
        click.option(
            "--splay",
            type=Duration(zero=True),
            default=0.0,
            help="Delay each slot by a fixed per-slot amount below DURATION.",
        ),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def definition_from(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The definition the options describe, checked as the agents check it (exit 2 if not)."""
    cron, every = options["cron"], options["every"]
    if (cron is None) == (every is None):
        raise click.UsageError("give one of --cron EXPR or --every DURATION")
    if every is not None and every != int(every):
        raise click.UsageError("--every must be whole seconds")
    if every is not None and options["tz"] != "UTC":
        raise click.UsageError("--tz applies to --cron only (--every is aligned to the epoch)")
    fleet = is_fleet(options)
    job = {"cmd": options["cmd"], **(fleet_job(options) if fleet else job_fields(options))}
    raw: dict[str, Any] = {
        "name": name,
        "cron": cron,
        "tz": options["tz"],
        "every": None if every is None else int(every),
        "job": job,
        "concurrency": options["concurrency"],
        "catch_up": options["catch_up"],
        "catch_up_window": options["catch_up_window"],
        "splay": options["splay"],
        "after": options["after"],
    }
    if fleet:
        raw["fleet"] = {"selector": selector(options), "policy": policy(options)}
    try:
        return parse_definition(raw).to_dict()
    except ScheduleError as exc:
        raise click.UsageError(str(exc)) from None


def is_fleet(options: dict[str, Any]) -> bool:
    """Whether the schedule's slots are fleet runs: --all, --nodes, --fleet or a roll-out
    option given (else --label is a plain job's placement, as for submit)."""
    return bool(
        options["select_all"] or options["nodes"] or options["fleet"] or policy_given(options)
    )


def operator_key() -> SigningKey:
    key = find_key(click.get_current_context().meta.get("schedctl.key_path"))
    if key is None:
        raise click.UsageError("schedules are always signed: no operator key (see schedctl keygen)")
    return key


async def signed_action(client: Client, action: str, name: str, key: SigningKey) -> Record:
    """A pause, resume, delete or run of the schedule as the cluster holds it now."""
    reply = await client.call("schedule_get", {"name": name})
    schedule = field(reply, "schedule", dict)
    value = str(field(schedule, "signature", dict).get("value"))
    signature = key.sign_schedule_action(action, name, value).to_dict()
    return await client.call(f"schedule_{action}", {"name": name, "signature": signature})


@click.group()
def schedule() -> None:
    """Run a job on a schedule: exactly once per slot, across failovers."""


@schedule.command()
@name_argument
@_options
@json_option
def create(name: str, as_json: bool, **options: Any) -> None:
    """Create schedule NAME (signed with your operator key); print its next slot."""
    definition = definition_from(name, options)
    signature = operator_key().sign_schedule(definition).to_dict()
    body = {"schedule": {"definition": definition, "signature": signature}}
    show("schedule_create", body, as_json, lambda reply: f"schedule {name} created")


@schedule.command(name="list")
@json_option
def list_schedules(as_json: bool) -> None:
    """List the schedules."""
    show("schedule_list", None, as_json, lambda r: format_schedules(field(r, "schedules", list)))


@schedule.command(name="show")
@name_argument
@json_option
def show_schedule(name: str, as_json: bool) -> None:
    """Show a schedule and its recent slots: job and state, or why a slot was skipped."""
    show("schedule_get", {"name": name}, as_json, format_schedule)


def _action(action: str, done: str) -> Callable[[str, bool], None]:
    def command(name: str, as_json: bool) -> None:
        key = operator_key()

        async def work(client: Client) -> int:
            reply = await signed_action(client, action, name, key)
            if as_json:
                print_json(reply)
            elif action == "run":
                click.echo(field(reply, "job", dict).get("id"))
            else:
                click.echo(f"schedule {name} {done}")
            return 0

        run(work)

    return command


for _verb, _done, _help in (
    ("pause", "paused", "Pause a schedule: its slots are skipped (reason: paused) until resumed."),
    ("resume", "resumed", "Resume a paused schedule from its next slot."),
    ("delete", "deleted", "Delete a schedule (its runs are ordinary jobs and stay)."),
    ("run", "", "Run the schedule's job once now, outside its slots; print the job id."),
):
    schedule.command(name=_verb, help=_help)(json_option(name_argument(_action(_verb, _done))))
