"""Kill job processes a previous incarnation of this agent left running (outside systemd)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path

from schedagent.core.model import Job, JobState
from schedagent.errors import NotFoundError
from schedagent.etcd.jobstore import JobStore
from schedagent.host.containment import Containment

log = logging.getLogger(__name__)


def job_processes(job_id: str, attempt: int, proc: Path = Path("/proc")) -> Iterator[int]:
    """PIDs whose environment names the job's attempt: its shell and all it started.

    Found by environment rather than by the PID in the record, which is written only
    for jobs that live a while; a reused PID never carries the job's id.
    """
    wanted = {f"SCHED_JOB_ID={job_id}".encode(), f"SCHED_ATTEMPT={attempt}".encode()}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted <= set(environ.split(b"\0")):
            yield int(entry.name)


def stale_attempts(jobs: list[Job], node: str, lease: int) -> list[Job]:
    """RUNNING jobs of this node started by another incarnation (another lease)."""
    stale = []
    for job in jobs:
        current = job.current_attempt()
        if job.state != JobState.RUNNING or job.node != node or current is None:
            continue
        if current.lease != lease:
            stale.append(job)
    return stale


async def reap_previous_incarnation(
    jobs: JobStore, node: str, lease: int, containment: Containment | None = None
) -> int:
    """SIGKILL the processes of stale attempts still alive (their cgroups first, then any
    process carrying their ids); returns how many.

    Under systemd the unit's control group is killed when the agent dies; without
    it (dev clusters, tests) the job processes outlive a killed agent. Their
    records are closed by the leader ("agent restarted").
    """
    killed = 0
    # This node's own work only, from the placement index, however long the history.
    for job in stale_attempts(await jobs.placed_records(node), node, lease):
        # Per job: a running total would log every later job as killed too.
        count = 0
        if containment is not None:
            count += await containment.remove_leftover(f"job-{job.id}-{job.attempt}")
        count += _kill(job_processes(job.id, job.attempt))
        if count:
            log.warning(
                "killed job %s attempt %d (%d processes): left running by a previous incarnation",
                job.id,
                job.attempt,
                count,
                extra={"job_id": job.id, "attempt": job.attempt},
            )
        killed += count
    return killed


def _kill(pids: Iterable[int]) -> int:
    """SIGKILL each PID; how many were still there to be killed."""
    killed = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


async def remove_leftover_cgroups(jobs: JobStore, node: str, containment: Containment) -> int:
    """Kill and remove the attempt cgroups an earlier incarnation left (it was killed,
    or the leader closed its attempts before it came back); only those the records put
    on this node: another cluster's agent of the same name may share the host."""
    removed = 0
    for job_id, attempt in sorted(containment.leftovers()):
        try:
            job, _ = await jobs.get(job_id)
        except NotFoundError:
            continue
        if any(a.n == attempt and a.node == node for a in job.attempts):
            count = await containment.remove_leftover(f"job-{job_id}-{attempt}")
            removed += 1
            log.info(
                "removed the cgroup of job %s attempt %d (%d processes)", job_id, attempt, count
            )
    return removed
