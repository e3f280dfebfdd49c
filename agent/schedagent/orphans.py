"""Kill job processes a previous incarnation of this agent left running (outside systemd)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from .jobstore import JobStore
from .model import Job, JobState

log = logging.getLogger(__name__)


def is_job_process(pid: int, job_id: str, proc: Path = Path("/proc")) -> bool:
    """Whether pid is still the job's shell: its environment names the job.

    PIDs are reused; the environment check keeps us from killing a stranger.
    """
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"SCHED_JOB_ID={job_id}".encode() in environ.split(b"\0")


def stale_attempts(jobs: list[Job], node: str, lease: int) -> list[Job]:
    """RUNNING jobs of this node started by another incarnation (another lease)."""
    stale = []
    for job in jobs:
        current = job.current_attempt()
        if job.state != JobState.RUNNING or job.node != node or current is None:
            continue
        if current.lease != lease and job.pid:
            stale.append(job)
    return stale


async def reap_previous_incarnation(jobs: JobStore, node: str, lease: int) -> int:
    """SIGKILL the process groups of stale attempts still alive; returns how many.

    Under systemd, KillMode=control-group already did this when the agent died;
    without it (dev clusters, tests) the job processes outlive a killed agent.
    Their records are closed by the leader ("agent restarted").
    """
    records, _ = await jobs.all()
    killed = 0
    for job in stale_attempts([j for j, _ in records], node, lease):
        pid = job.pid or 0
        if is_job_process(pid, job.id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
                log.warning(
                    "killed job %s attempt %d left running by a previous incarnation",
                    job.id,
                    job.attempt,
                )
    return killed
