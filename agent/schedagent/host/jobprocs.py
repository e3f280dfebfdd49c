"""Job processes on this host, found by the SCHED_JOB_ID and SCHED_ATTEMPT they carry."""

from __future__ import annotations

import contextlib
import logging

import psutil

log = logging.getLogger(__name__)

Attempts = dict[tuple[str, int], list[psutil.Process]]


def job_attempts() -> Attempts:
    """Every live process whose environment names a job attempt, by (job id, attempt):
    a job's shell and all it started, whatever user it runs as (read as root).

    By environment rather than by the PID in the record, which is written only for jobs
    that live a while; a reused PID never carries the job's id.
    """
    found: Attempts = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            env = proc.environ()
            job_id, attempt = env.get("SCHED_JOB_ID"), env.get("SCHED_ATTEMPT", "")
            if job_id and attempt.isdigit() and proc.status() != psutil.STATUS_ZOMBIE:
                found.setdefault((job_id, int(attempt)), []).append(proc)
    return found


def kill(processes: list[psutil.Process]) -> int:
    """SIGKILL each process that is still the one found (psutil checks its start
    time, so a PID reused meanwhile is left alone); how many were killed."""
    killed = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
            killed += 1
    return killed
