"""JobStore.update's read, mutate, compare-and-swap, with writes batched (etcd/batcher.py)."""

from __future__ import annotations

from schedagent.core.model import Job
from schedagent.errors import ConflictError
from schedagent.etcd.batcher import TxnBatcher
from schedagent.etcd.jobstore import MAX_CAS_TRIES, JobStore, Mutation


class BatchedUpdates:
    """Updates of different jobs that happen together share a transaction; a write whose
    compare fails reads the record back in the same round trip and mutates that."""

    def __init__(self, jobs: JobStore, batcher: TxnBatcher) -> None:
        self.jobs = jobs
        self.batcher = batcher

    async def update(
        self, job_id: str, mutate: Mutation, seen: tuple[Job, int] | None = None
    ) -> tuple[Job | None, bool]:
        """update()'s contract, starting from seen (the record and its revision) if
        given, else a read: the job as stored after (None if gone), and whether this
        call changed it. NotFoundError if the first read finds nothing."""
        for _ in range(MAX_CAS_TRIES):
            job, revision = seen or await self.jobs.get(job_id)
            new = mutate(job.clone())
            if new is None:
                return job, False
            written, found = await self.batcher.run(self.jobs.guarded(new, revision))
            if written:
                return new, True
            seen = self.jobs.found(found)
            if seen is None:
                return None, False
        raise ConflictError(f"job {job_id}: too many concurrent writers")
