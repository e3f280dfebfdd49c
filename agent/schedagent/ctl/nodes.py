"""`schedctl node cordon|uncordon|drain|forget NAME`: keep jobs off a node, empty it, drop it."""

from __future__ import annotations

import click

from schedagent.core.names import NODE_NAME_RE
from schedagent.ctl.client import Client, Record
from schedagent.ctl.command import json_option, print_json, run
from schedagent.ctl.format import format_cordon
from schedagent.ctl.keys import find_key
from schedagent.ctl.params import Duration


def check_node(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not NODE_NAME_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a node name")
    return value


node_argument = click.argument("name", callback=check_node)


def _send(action: str, name: str, deadline: float | None, as_json: bool) -> None:
    """One signed node action (signed when an operator key is found, as a cancel)."""
    key = find_key(click.get_current_context().meta.get("schedctl.key_path"))
    body: Record = {"node": name}
    if action == "drain":
        body["deadline"] = deadline
    if key is not None:
        body["signature"] = key.sign_node_action(action, name, deadline).to_dict()

    async def work(client: Client) -> int:
        reply = await client.call(f"node_{action}", body)
        if as_json:
            print_json(reply)
        else:
            click.echo(format_cordon(action, name, reply))
        return 0

    run(work)


@click.group()
def node() -> None:
    """Cordon, drain, uncordon or forget a node (signed with your operator key, audited)."""


@node.command()
@node_argument
@json_option
def cordon(name: str, as_json: bool) -> None:
    """No new jobs on node NAME; what runs there keeps running. Outlives its agent's
    restarts (and may name a node that is down) until `node uncordon`."""
    _send("cordon", name, None, as_json)


@node.command()
@node_argument
@click.option(
    "--deadline",
    type=Duration(zero=True),
    help="Hand running jobs back after DURATION (0: at once). Default: the node's own "
    "jobs.drain_timeout, as a SIGTERM's drain.",
)
@json_option
def drain(name: str, deadline: float | None, as_json: bool) -> None:
    """Cordon node NAME, and at the deadline hand its running jobs back to the queue
    (no retry used: they run elsewhere); its agent keeps running."""
    _send("drain", name, deadline, as_json)


@node.command()
@node_argument
@json_option
def uncordon(name: str, as_json: bool) -> None:
    """Node NAME takes new jobs again (ends a cordon or a drain)."""
    _send("uncordon", name, None, as_json)


@node.command()
@node_argument
@json_option
def forget(name: str, as_json: bool) -> None:
    """Forget node NAME, decommissioned and its agent stopped: fleet runs over --all or
    a label no longer name it (as unreachable), and its cordon goes. Refused while it is
    up; should it come back, it is known again."""
    _send("forget", name, None, as_json)
