"""The options that describe a job's run, shared by `submit` and `schedule create`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from schedagent.core.spec import ENV_NAME_RE
from schedagent.ctl.params import (
    KeyValue,
    PositiveNumber,
    check_cmd,
    check_cwd,
    check_name,
    check_user,
)

Command = Callable[..., None]

_OPTIONS = [
    click.option("--cpus", type=PositiveNumber(), default=1.0, show_default=True),
    click.option(
        "--timeout", "job_timeout", type=PositiveNumber(), help="Seconds before the job is killed."
    ),
    click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True),
    click.option("--node", callback=check_name, help="Run only on this node."),
    click.option("--label", "labels", type=KeyValue(), multiple=True, help="Required node label."),
    click.option("--env", type=KeyValue(ENV_NAME_RE), multiple=True, help="Environment variable."),
    click.option("--cwd", callback=check_cwd, help="Absolute working directory on the node."),
    click.option("--user", callback=check_user, help="Run as this user (if the agent allows it)."),
]

cmd_option = click.option("--cmd", callback=check_cmd, help="Shell command to run.")


def job_options(command: Command) -> Command:
    """Decorate a command with the job's options (its parameters as `job_fields` reads)."""
    for decorate in reversed(_OPTIONS):
        command = decorate(command)
    return command


def job_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """The spec fields the job's options give (cmd and the command's own aside)."""
    return {
        "cpus": options["cpus"],
        "timeout": options["job_timeout"],
        "retries": options["retries"],
        "env": dict(options["env"]),
        "cwd": options["cwd"],
        "node": options["node"],
        "labels": dict(options["labels"]),
        "user": options["user"],
    }
