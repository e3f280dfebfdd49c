"""`schedctl explain JOB`: the leader's account of why the job is where it is."""

from __future__ import annotations

import click

from schedagent.core import wire
from schedagent.core.explain import Explanation
from schedagent.ctl.client import Client, CtlError, NoAgentError
from schedagent.ctl.command import json_option, print_json, run
from schedagent.ctl.exits import EXIT_NO_CLUSTER
from schedagent.ctl.format import table
from schedagent.ctl.params import JobId
from schedagent.errors import WireError


def format_explanation(found: Explanation) -> str:
    lines = [f"job {found.job} {found.state}: {found.summary}"]
    if found.nodes:
        rows = [
            [v.node, f"{v.free:g}/{v.cpus:g}", "yes" if v.fits else "no", "; ".join(v.reasons)]
            for v in found.nodes
        ]
        lines.append(table(["NODE", "FREE/CPUS", "FITS NOW", "WHY NOT"], rows))
    return "\n".join(lines)


@click.command()
@click.argument("job", type=JobId())
@json_option
def explain(job: str, as_json: bool) -> None:
    """Why JOB is pending (each node and why it cannot take it now) or why its node won.

    The leader answers, from its view of the cluster.
    """

    async def work(client: Client) -> int:
        try:
            reply = await client.call("explain", {"id": job})
        except NoAgentError:
            raise CtlError(
                f"no leader answered on {client.shown_url} within {client.timeout:g} s "
                "(schedctl leader shows whether one is elected)",
                EXIT_NO_CLUSTER,
            ) from None
        if as_json:
            print_json(reply)
            return 0
        try:
            click.echo(format_explanation(wire.parse_explanation(reply)))
        except WireError as exc:
            raise CtlError(f"malformed reply from the leader: {exc}") from None
        return 0

    run(work)
