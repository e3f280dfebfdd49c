"""Invariants every set of job records must satisfy, checked after tests and chaos runs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from schedagent.core.model import FINAL_STATES, Job
from schedagent.core.transitions import HANDED_BACK


def check_jobs(accepted: Iterable[str], records: Mapping[str, Job]) -> list[str]:
    """Every violation found, one line each; an empty list means all hold.

    - every accepted job exists and is in a final state;
    - no two attempts of one job overlapped in time on different nodes;
    - attempts that used a retry are at most retries + 1 (a hand-back at a graceful
      stop does not use one);
    - every attempt that ended has its end time and a reason; a final job has no open
      attempt.
    """
    problems: list[str] = []
    for job_id in accepted:
        job = records.get(job_id)
        if job is None:
            problems.append(f"{job_id}: accepted but has no record")
            continue
        problems.extend(f"{job_id}: {p}" for p in check_job(job))
    return problems


def check_job(job: Job) -> list[str]:
    problems = []
    if job.state not in FINAL_STATES:
        problems.append(f"not final: {job.state}")
    counted = [a for a in job.attempts if a.state != HANDED_BACK]
    if len(counted) > job.spec.retries + 1:
        problems.append(f"{len(counted)} attempts for retries={job.spec.retries}")
    for attempt in job.attempts:
        if attempt.ended_at is None:
            if job.state in FINAL_STATES:
                problems.append(f"attempt {attempt.n} never ended")
            continue
        if not attempt.reason or not attempt.state:
            problems.append(f"attempt {attempt.n} ended without a state and reason")
    problems.extend(_overlaps(job))
    return problems


def _overlaps(job: Job) -> list[str]:
    ran = sorted(
        (a for a in job.attempts if a.started_at is not None),
        key=lambda a: a.started_at or 0.0,
    )
    problems = []
    for before, after in itertools.combinations(ran, 2):
        end = before.ended_at if before.ended_at is not None else float("inf")
        if before.node != after.node and (after.started_at or 0.0) < end:
            problems.append(
                f"attempts {before.n} on {before.node} and {after.n} on {after.node} overlap"
            )
    return problems


def check_placements(records: Mapping[str, Job], placed: Iterable[tuple[str, str]]) -> list[str]:
    """Violations of the placement index, one line each: `placed/{node}/{job}` exists for
    exactly the jobs of records that hold CPUs (ASSIGNED, RUNNING) on node.

    records holds both live and final jobs (read from jobs/ and done/); placed holds
    (node, job id) for every key under placed/, keys of other jobs are ignored.
    """
    wanted = {(j.node, j.id) for j in records.values() if j.state.holds_cpus and j.node}
    found = {(node, job_id) for node, job_id in placed if job_id in records}
    problems = [
        f"{job_id}: placed on {node} but is {records[job_id].state} on {records[job_id].node}"
        for node, job_id in sorted(found - wanted)
    ]
    problems += [
        f"{j}: holds CPUs on {n} but has no placement key" for n, j in sorted(wanted - found)
    ]
    return problems


def summarize(records: Mapping[str, Job]) -> dict[str, Any]:
    """Counts by final state and attempts, for a run's closing line."""
    states: dict[str, int] = {}
    attempts = 0
    for job in records.values():
        states[str(job.state)] = states.get(str(job.state), 0) + 1
        attempts += len(job.attempts)
    return {"jobs": len(records), "attempts": attempts, "states": states}
