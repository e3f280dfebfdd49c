"""Processes of attempts this node runs no more, killed; the process table read only if need be."""

from __future__ import annotations

import asyncio
import logging

import psutil

from schedagent.core.model import Job
from schedagent.daemon.worker import Worker
from schedagent.errors import NotFoundError
from schedagent.host import jobprocs

log = logging.getLogger(__name__)

FOREIGN_REMEMBERED = 10000

Records = dict[str, tuple[Job, int]]
# What the worker has run: attempts started so far, and those running now.
WorkSeen = tuple[int, frozenset[tuple[str, int]]]


class StrayKiller:
    """Kills processes of attempts this node ran and runs no more: left by an earlier
    incarnation of the agent (outside systemd), or left behind by a finished job (a
    background process, one that left its process group).

    Reading every process's environment costs (a quarter of an idle agent's CPU when it
    was done every pass), so the table is read only when such a process may exist: at
    the first pass (an earlier incarnation's), after any attempt ended since the last
    clean read (an attempt started since, or one running then is gone), and again after
    a read that found a stray (a process may have forked meanwhile, or not died).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._clean: WorkSeen | None = None  # the work as of the last read that found no stray
        self._foreign: set[tuple[str, int]] = set()  # attempts found not to be ours

    def _seen(self) -> WorkSeen:
        running = frozenset((r.job_id, r.attempt) for r in self.worker.running.values())
        return self.worker.starts, running

    async def run(self, records: Records) -> None:
        seen = self._seen()
        if seen == self._clean:
            return  # no attempt ended since a read found no stray
        found = await asyncio.to_thread(jobprocs.job_attempts)
        strays = 0
        for (job_id, attempt), processes in found.items():
            if await self._stray(job_id, attempt, records):
                strays += 1
                self._kill(job_id, attempt, processes)
        self._clean = None if strays else seen

    async def _stray(self, job_id: str, attempt: int, records: Records) -> bool:
        running = self.worker.running.get(job_id)
        if running is not None and running.attempt == attempt and not running.ended:
            return False
        return job_id not in self.worker.starting and await self._was_ours(job_id, attempt, records)

    def _kill(self, job_id: str, attempt: int, processes: list[psutil.Process]) -> None:
        killed = jobprocs.kill(processes)
        if killed:
            log.warning(
                "job %s attempt %d: killed %d process(es) this node no longer runs",
                job_id,
                attempt,
                killed,
                extra={"job_id": job_id, "attempt": attempt},
            )

    async def _was_ours(self, job_id: str, attempt: int, records: Records) -> bool:
        """Whether this cluster's record puts that attempt on this node. A process of
        a job the record does not know (another cluster's on a shared host) is left be."""
        if (job_id, attempt) in self._foreign:
            return False
        job = records.get(job_id, (None, 0))[0]
        if job is None:
            try:
                job, _ = await self.worker.jobs.get(job_id)
            except NotFoundError:
                job = None
        node = self.worker.node
        ours = job is not None and any(a.n == attempt and a.node == node for a in job.attempts)
        if not ours:
            if len(self._foreign) >= FOREIGN_REMEMBERED:
                self._foreign.clear()
            self._foreign.add((job_id, attempt))
        return ours
