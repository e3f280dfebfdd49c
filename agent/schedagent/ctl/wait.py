"""`schedctl wait JOB...`: wait until the jobs are final; exit as the first that failed."""

from __future__ import annotations

import asyncio

import click

from schedagent.ctl.client import Client, Record
from schedagent.ctl.command import run
from schedagent.ctl.exits import first_failure, job_exit_code
from schedagent.ctl.follow import JobFollower
from schedagent.ctl.params import JobId
from schedagent.ctl.waitlimit import WaitLimit, wait_timeout_option


def _discard(stream: str, data: str) -> None:
    """`wait` prints no output: `logs` is for that."""


async def wait_for_jobs(client: Client, jobs: list[str], bound: float | None) -> list[Record]:
    """The final records of the jobs, in the order given; WaitGaveUp past a bound.

    The followers share one connection: after a NATS restart only one of them
    resubscribes to its events, the others end through their poll of `get`.
    """
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(JobFollower(client, job, _discard, WaitLimit(bound)).run())
            for job in jobs
        ]
    return [task.result() for task in tasks]


def _first_leaf(error: BaseException) -> BaseException:
    """The failure a TaskGroup's group carries (the first, if several jobs failed)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@click.command()
@click.argument("jobs", nargs=-1, required=True, type=JobId())
@wait_timeout_option
def wait(jobs: tuple[str, ...], wait_timeout: float | None) -> None:
    """Wait until every JOB is final; print each one's state; exit with their status.

    One job: its own status, as submit --wait. Several: 0 if all SUCCEEDED, else the
    status of the first one, in the order given, that did not.
    """

    async def work(client: Client) -> int:
        try:
            records = await wait_for_jobs(client, list(dict.fromkeys(jobs)), wait_timeout)
        except ExceptionGroup as group:
            raise _first_leaf(group) from None
        for record in records:
            click.echo(f"{record.get('id')}  {record.get('state')}  exit {job_exit_code(record)}")
        return first_failure([job_exit_code(record) for record in records])

    run(work)
