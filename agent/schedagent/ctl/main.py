"""schedctl, the operator CLI: submit, inspect, cancel and follow jobs over the NATS API."""

from __future__ import annotations

import os
import select
import signal
import sys
import uuid
from typing import Any, NoReturn, TextIO

import click

from schedagent import __version__
from schedagent.core import tail
from schedagent.core.model import JobState
from schedagent.ctl import format as fmt
from schedagent.ctl.batch import read_lines, refuse_options_beside_file, report, submit_lines
from schedagent.ctl.client import (
    Client,
    Record,
    field,
    is_final,
)
from schedagent.ctl.command import (
    Settings,
    json_option,
    print_json,
    run,
    show,
    write_bytes,
    write_chunk,
)
from schedagent.ctl.completion import completion
from schedagent.ctl.contexts import context, overlay
from schedagent.ctl.exits import EPILOG, ExitCodes, job_exit_code
from schedagent.ctl.explain import explain
from schedagent.ctl.fleet import GroupId, cancel_group, run_fleet, show_group
from schedagent.ctl.fleetruns import list_fleet_runs
from schedagent.ctl.follow import JobFollower, dump_output
from schedagent.ctl.jobopts import cmd_option, job_fields, job_options
from schedagent.ctl.keys import find_key, keygen, sign_spec
from schedagent.ctl.nodes import node
from schedagent.ctl.params import (
    JobId,
    JobIds,
    MemorySize,
    PositiveNumber,
    check_name,
    check_prefix,
    parent_list,
)
from schedagent.ctl.schedules import schedule
from schedagent.ctl.ui.command import ui
from schedagent.ctl.wait import wait
from schedagent.ctl.waitlimit import WaitLimit, wait_timeout_option


@click.group(cls=ExitCodes, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--nats",
    "url",
    envvar="SCHEDCTL_NATS_URL",
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="NATS server URL, or several separated by commas (env SCHEDCTL_NATS_URL).",
)
@click.option(
    "--prefix",
    envvar="SCHEDCTL_PREFIX",
    default="sched",
    show_default=True,
    callback=check_prefix,
    help="NATS subject prefix of the cluster (env SCHEDCTL_PREFIX).",
)
@click.option(
    "--timeout",
    "request_timeout",
    type=PositiveNumber(),
    default=2.0,
    show_default=True,
    help="Seconds to wait for an agent to answer a request.",
)
@click.option(
    "--nats-ca",
    "ca_file",
    envvar="SCHEDCTL_NATS_CA",
    type=click.Path(dir_okay=False),
    help="CA certificate that signed the NATS servers' certificates: talk TLS and "
    "check the server against it (env SCHEDCTL_NATS_CA).",
)
@click.option(
    "--key",
    "key_path",
    envvar="SCHEDCTL_KEY",
    help="Operator key that signs submitted jobs and cancels (env SCHEDCTL_KEY; default "
    "~/.config/schedctl/operator.key, then /etc/schedctl/operator.key).",
)
@click.option(
    "--context",
    "context_name",
    envvar="SCHEDCTL_CONTEXT",
    help="Cluster to talk to, from the config file (env SCHEDCTL_CONTEXT; default its "
    "current one): its NATS URLs, CA, credentials file and operator key stand wherever "
    "these options are not given.",
)
@click.version_option(__version__, prog_name="schedctl")
@click.pass_context
def cli(
    ctx: click.Context,
    url: str,
    prefix: str,
    request_timeout: float,
    ca_file: str | None,
    key_path: str | None,
    context_name: str | None,
) -> None:
    """Operate a schedagent cluster."""
    given = {"url": url, "prefix": prefix, "ca_file": ca_file, "key_path": key_path}
    chosen = overlay(ctx, context_name, given)
    ctx.obj = Settings(chosen["url"], chosen["prefix"], request_timeout, chosen["ca_file"] or None)
    ctx.meta["schedctl.key_path"] = chosen["key_path"]


cli.add_command(keygen)
cli.add_command(completion)
cli.add_command(context)
cli.add_command(schedule)
cli.add_command(wait)
cli.add_command(node)
cli.add_command(explain)
cli.add_command(ui)
cli.add_command(run_fleet)
cli.add_command(list_fleet_runs)


class JobOrGroup(JobId):
    """A job id, or a fleet run's (g-...)."""

    name = "JOB|GROUP"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if str(value).strip().lower().startswith("g-"):
            return GroupId().convert(value, param, ctx)
        return super().convert(value, param, ctx)


@cli.command()
@cmd_option
@click.option(
    "--file",
    "spec_file",
    type=click.File("r", encoding="utf-8"),
    help="Submit many jobs: one JSON object per line with the fields of these options "
    '({"cmd": "...", "cpus": 2, "labels": {"zone": "a"}, ...}); - reads stdin.',
)
@job_options
@click.option("--idempotency-key", callback=check_name, help="Default: a fresh random key.")
@click.option(
    "--after",
    type=JobIds(),
    multiple=True,
    callback=parent_list,
    help="Run only after these jobs SUCCEEDED; if one ends otherwise, this one ends "
    "CANCELED without running.",
)
@click.option(
    "--memory",
    type=MemorySize(),
    help="Memory the job may use (64M, 2G; no swap); over it, the OOM killer ends it FAILED.",
)
@click.option("--tasks", type=click.IntRange(1, 4194304), help="Processes and threads at most.")
@click.option("--wait", is_flag=True, help="Stream the output and exit with the job's status.")
@wait_timeout_option
@json_option
def submit(
    cmd: str | None,
    spec_file: TextIO | None,
    idempotency_key: str | None,
    after: list[str],
    memory: int | None,
    tasks: int | None,
    wait: bool,
    wait_timeout: float | None,
    as_json: bool,
    **job: Any,
) -> None:
    """Submit a job and print its id.

    With --wait, stdout and stderr carry only the job's own output, so the id
    (or the --json record) is printed on stderr instead. With --file, one id per
    line of the file, in order; a line that fails is named on stderr (exit 1).
    """
    if spec_file is not None:
        submit_file(spec_file, as_json)
    if cmd is None:
        raise click.UsageError("give --cmd, or --file with one job per line")
    if wait_timeout is not None and not wait:
        raise click.UsageError("--wait-timeout bounds --wait: give both")
    spec = {
        "cmd": cmd,
        **job_fields(job),
        "idempotency_key": idempotency_key or str(uuid.uuid4()),
    }
    # Each left out unless given: an agent older than the field refuses it.
    optional = {"after": after, "memory": memory, "tasks": tasks}
    spec.update({name: value for name, value in optional.items() if value})
    key = find_key(click.get_current_context().meta.get("schedctl.key_path"))
    sign_spec(spec, key)

    async def work(client: Client) -> int:
        reply = await client.submit(spec)
        job: Record = field(reply, "job", dict)
        if as_json:
            print_json(reply, err=wait)
        else:
            click.echo(job.get("id"), err=wait)
        if not wait:
            return 0
        limit = WaitLimit(wait_timeout)
        follower = JobFollower(client, str(job.get("id")), write_chunk, limit)
        return job_exit_code(await follower.run())

    run(work)


def submit_file(spec_file: TextIO, as_json: bool) -> NoReturn:
    ctx = click.get_current_context()
    refuse_options_beside_file(ctx)
    lines = read_lines(spec_file, find_key(ctx.meta.get("schedctl.key_path")))

    async def work(client: Client) -> int:
        results, status = await submit_lines(client, lines)
        if as_json:
            print_json({"jobs": [result.to_dict() for result in results]})
        return status or report(results, print_ids=not as_json)

    run(work)


@cli.command()
@click.argument("job", type=JobOrGroup())
@json_option
def status(job: str, as_json: bool) -> None:
    """Show a job's state, attempts and output tail (a fleet run's: its per-host table)."""
    if job.startswith("g-"):
        show_group(job, as_json)
    show(
        "get",
        {"id": job},
        as_json,
        lambda reply: fmt.format_status(field(reply, "job", dict), reply.get("pending_reason")),
    )


@cli.command(name="list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in JobState], case_sensitive=False),
    help="Only jobs in this state.",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
def list_jobs(state: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""

    async def work(client: Client) -> int:
        jobs = await client.list_jobs(state.upper() if state else None, limit)
        if as_json:
            print_json({"jobs": jobs})
        else:
            click.echo(fmt.format_jobs(jobs))
        return 0

    run(work)


@cli.command()
@click.argument("job", type=JobOrGroup())
@json_option
def cancel(job: str, as_json: bool) -> None:
    """Cancel a job (a running one is killed by its node), or what of a fleet run has
    not finished (hosts not started are skipped)."""
    if job.startswith("g-"):
        cancel_group(job, as_json)
    key = find_key(click.get_current_context().meta.get("schedctl.key_path"))
    request: Record = {"id": job}
    if key is not None:
        request["signature"] = key.sign_cancel(job).to_dict()
    show("cancel", request, as_json, lambda reply: fmt.format_cancel(field(reply, "job", dict)))


@cli.command()
@click.argument("job", type=JobId())
@click.option("-f", "--follow", is_flag=True, help="Keep following until the job is final.")
def logs(job: str, follow: bool) -> None:
    """Print a job's output (every attempt); stdout to stdout, stderr to stderr.

    With -f, exit with the job's status once it is final, as submit --wait does.
    """

    async def work(client: Client) -> int:
        record = await client.get(job)
        if follow and not (is_final(record) and await client.last_seq("output", job) is None):
            # No bound: a follower watches a job as long as it takes (Ctrl-C ends it).
            record = await JobFollower(client, job, write_chunk, WaitLimit(0)).run()
        elif not await dump_output(client, job, write_chunk):
            # The stream keeps output for a while only; the record keeps its tail.
            write_bytes(tail.output_bytes(record))
        return job_exit_code(record) if follow else 0

    run(work)


@cli.command()
@json_option
def nodes(as_json: bool) -> None:
    """List the nodes of the cluster."""

    def render(reply: Record) -> str:
        return fmt.format_nodes(field(reply, "nodes", list), fmt.cordons_of(reply))

    show("nodes", None, as_json, render)


@cli.command()
@json_option
def leader(as_json: bool) -> None:
    """Show the leader node and its fencing token."""

    def render(reply: Record) -> str:
        found = reply.get("leader")
        return fmt.format_leader(found if isinstance(found, dict) else None)

    show("leader", None, as_json, render)


def _stdout_broken() -> bool:
    """Whether stdout's reader went away (poll reports an error on a widowed pipe)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP come unasked
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _on_sigpipe(signum: int, frame: object) -> None:
    # Only a widowed stdout kills schedctl: a NATS server that closes the connection
    # while schedctl writes to it (over TLS, after refusing a password) is an error
    # nats-py reports, and schedctl exits 3 with its message.
    if _stdout_broken():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)


def main() -> None:
    # Die quietly like other Unix filters when a reader such as `head` goes away; nats-py
    # would otherwise swallow the write errors raised inside its message callbacks.
    signal.signal(signal.SIGPIPE, _on_sigpipe)
    cli(prog_name="schedctl")
