"""A job's parents (`after`): each must exist at submit; `get` says which it waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from schedagent.core.deps import parent_reason
from schedagent.core.model import JobSpec, JobState
from schedagent.errors import NotFoundError
from schedagent.etcd.jobstore import JobStore

# Parents read from etcd at once (one transaction each).
READS_AT_ONCE = 64


async def states(jobs: JobStore, ids: Iterable[str]) -> dict[str, JobState | None]:
    """The state of each job named, live or final; None for one with no record."""
    wanted = sorted(set(ids))
    found: dict[str, JobState | None] = {}
    for start in range(0, len(wanted), READS_AT_ONCE):
        chunk = wanted[start : start + READS_AT_ONCE]
        read = await asyncio.gather(*(_state(jobs, job_id) for job_id in chunk))
        found.update(zip(chunk, read, strict=True))
    return found


async def _state(jobs: JobStore, job_id: str) -> JobState | None:
    try:
        job, _ = await jobs.get(job_id)
    except NotFoundError:
        return None
    return job.state


async def unknown_parents(jobs: JobStore, specs: Sequence[JobSpec]) -> list[str | None]:
    """Per spec, None, or the error for the parents it names that have no record.

    A parent that already ended is accepted: the leader then runs the child or ends it
    unrun, as it would have had the child come first.
    """
    known = await states(jobs, (p for spec in specs for p in spec.after))
    errors: list[str | None] = []
    for spec in specs:
        missing = [p for p in spec.after if known[p] is None]
        errors.append(
            None
            if not missing
            else f"after: no job {', '.join(missing)} (never submitted, or deleted by retention)"
        )
    return errors


async def waiting_reason(jobs: JobStore, after: Sequence[str]) -> str | None:
    """What a job that waits for its parents waits for, or None if they all SUCCEEDED."""
    known = await states(jobs, after)
    for parent in after:
        state = known[parent]
        if state is None or (state.final and state != JobState.SUCCEEDED):
            return parent_reason(parent, state) + " (the leader ends it)"
    waiting = [f"{p} ({known[p]})" for p in after if known[p] != JobState.SUCCEEDED]
    return f"waiting for parent(s) {', '.join(waiting)}" if waiting else None
