"""Invariants of job records, and of what ran against them, checked after failure tests."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from schedagent.core.model import FINAL_STATES, Attempt, Job, JobState
from schedagent.core.transitions import HANDED_BACK, LOST_TRACK
from schedagent.dev import marks
from schedagent.dev.marks import Mark


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


# Attempt ends that say the agent, not the command, ended it: such an attempt may have
# been recorded RUNNING and still never have reached its command.
INTERRUPTED = frozenset(
    {
        "node lost",
        "agent restarted",
        "agent lost its etcd lease",
        "agent cut off from etcd",
        "agent stopped",
        LOST_TRACK,
    }
)


def check_executions(seen: Iterable[Mark], records: Mapping[str, Job]) -> list[str]:
    """Compare what ran (the jobs' own marks) with the records of those jobs:

    - no run the records do not show (its attempt recorded as started), and no attempt
      run twice;
    - no two runs of one job alive at the same time (marks.overlaps);
    - no recorded start without a run, unless the agent ended the attempt (node lost,
      agent stopped, canceled, never started, cannot start).
    """
    seen = list(seen)
    ran, started = marks.by_attempt(seen), marks.starts(seen)
    problems: list[str] = []
    for job_id, n in sorted(ran):
        job = records.get(job_id)
        attempt = None if job is None else _attempt(job, n)
        if attempt is None or attempt.started_at is None:
            problems.append(f"{job_id}: attempt {n} ran, but the record shows no start of it")
        if started[(job_id, n)] > 1:
            problems.append(f"{job_id}: attempt {n} ran {started[(job_id, n)]} times")
    problems.extend(marks.overlaps(seen))
    for job_id, job in records.items():
        for attempt in job.attempts:
            if attempt.started_at is None or (job_id, attempt.n) in ran:
                continue
            if not _agent_ended(attempt):
                problems.append(
                    f"{job_id}: attempt {attempt.n} recorded started and ended "
                    f"{attempt.state} ({attempt.reason}), but it never ran"
                )
    return problems


def check_cancels(
    seen: Iterable[Mark],
    acknowledged: Mapping[str, float],
    records: Mapping[str, Job],
    grace: float,
) -> list[str]:
    """No job ran after its cancel was acknowledged (the API's reply, at that time):
    no attempt started after it, and one already running stopped within grace."""
    problems = []
    for (job_id, n), run in sorted(marks.by_attempt(seen).items()):
        acked = acknowledged.get(job_id)
        if acked is None:
            continue
        job = records.get(job_id)
        attempt = None if job is None else _attempt(job, n)
        recorded = None if attempt is None else attempt.started_at
        # The worker records RUNNING before the command starts: a command whose attempt
        # was recorded RUNNING before the cancel may start a moment after it, and is
        # then killed; one recorded after it must never run.
        if run.start > acked and (recorded is None or recorded > acked):
            problems.append(
                f"{job_id}: attempt {n} started {run.start - acked:.2f}s after its cancel"
            )
        elif run.until() > acked + grace:
            problems.append(
                f"{job_id}: attempt {n} still ran {run.until() - acked:.2f}s after its cancel"
                f" (grace {grace:g}s)"
            )
    return problems


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """At one time: the RUNNING records (job -> (attempt, updated_at)), read first, and
    the job attempts that have a process on the host, found right after."""

    at: float
    running: Mapping[str, tuple[int, float]]
    processes: frozenset[tuple[str, int]]


def check_running_have_processes(snapshots: Sequence[Snapshot], grace: float) -> list[str]:
    """No RUNNING record without a process: a record unchanged over more than grace in
    successive snapshots, without a process of its attempt in any of them, is a phantom.

    A single snapshot proves nothing (the job may have ended between the read and the
    scan; an agent may be about to close an attempt it knows is gone), hence grace.
    """
    problems = []
    since: dict[tuple[str, int, float], float] = {}  # record version -> first seen bare
    reported: set[tuple[str, int, float]] = set()
    for snap in snapshots:
        bare = [
            (job_id, attempt, updated)
            for job_id, (attempt, updated) in snap.running.items()
            if (job_id, attempt) not in snap.processes
        ]
        since = {version: since.get(version, snap.at) for version in bare}
        for version, first in since.items():
            if snap.at - first > grace and version not in reported:
                reported.add(version)
                problems.append(
                    f"{version[0]}: attempt {version[1]} recorded RUNNING with no process"
                    f" for {snap.at - first:.1f}s"
                )
    return problems


def _attempt(job: Job, n: int) -> Attempt | None:
    return next((a for a in job.attempts if a.n == n), None)


def _agent_ended(attempt: Attempt) -> bool:
    reason = attempt.reason or ""
    return (
        reason in INTERRUPTED
        or attempt.state in (HANDED_BACK, str(JobState.CANCELED))
        or reason.startswith("cannot start")
    )
