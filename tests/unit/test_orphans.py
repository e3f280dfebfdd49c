"""The reaper of a previous incarnation's jobs: it kills their live processes, says so for those."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import cast

import pytest

from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.daemon.orphans import reap_previous_incarnation
from schedagent.etcd.jobstore import JobStore

NODE, OLD_LEASE, LEASE = "n1", 1, 2


class Records:
    """The one JobStore read the reaper makes (the node's placed jobs), without etcd."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    async def placed_records(self, node: str) -> list[Job]:
        return [job for job in self.jobs if job.node == node]


def stale_job(job_id: str) -> Job:
    attempt = Attempt(n=1, node=NODE, assigned_at=0.0, started_at=0.0, lease=OLD_LEASE)
    spec = JobSpec(cmd="sleep 60")
    return Job(job_id, spec, JobState.RUNNING, 0.0, node=NODE, attempts=[attempt])


def leftover(job: Job) -> subprocess.Popen[bytes]:
    """A real process carrying the job's attempt in its environment, as the worker starts it."""
    env = {**os.environ, "SCHED_JOB_ID": job.id, "SCHED_ATTEMPT": str(job.attempt)}
    return subprocess.Popen(["sleep", "60"], env=env)


async def test_only_jobs_whose_processes_were_killed_are_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alive, gone = stale_job("a" * 20), stale_job("b" * 20)
    proc = leftover(alive)
    try:
        with caplog.at_level(logging.WARNING, logger="schedagent.daemon.orphans"):
            killed = await reap_previous_incarnation(
                cast(JobStore, Records([alive, gone])), NODE, LEASE
            )
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert killed == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and f"killed job {alive.id} attempt 1" in said[0], said
