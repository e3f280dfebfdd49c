"""Many job records created at once, in as few transactions as etcd's limits allow."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

from schedagent.core.batch import MAX_TXN_OPS, plan_creates
from schedagent.core.model import Job, JobSpec, JobState, new_job_id
from schedagent.etcd.jobstore import JobStore, decode_job
from schedagent.etcd.store import Absent, Compare, Put

T = TypeVar("T")
Made = tuple[Job, bool]


class BatchCreate:
    """One JobStore.create_many call: the new records, and what each spec came to."""

    def __init__(self, jobs: JobStore, specs: Sequence[JobSpec]) -> None:
        now = time.time()
        ids = sorted(new_job_id(now) for _ in specs)  # the batch keeps its order
        self.jobs = jobs
        self.specs = specs
        self.new = [
            Job(id=job_id, spec=spec, state=JobState.PENDING, submitted_at=now, updated_at=now)
            for job_id, spec in zip(ids, specs, strict=True)
        ]
        self.records = [job.to_json() for job in self.new]
        self.made: dict[int, Made] = {}

    async def run(self, max_ops: int, max_bytes: int) -> list[Made]:
        sizes = [(job.spec.idempotency_key, len(self.records[n])) for n, job in enumerate(self.new)]
        # As in JobStore.create: absent as live and as finished, and the key absent.
        plan = plan_creates(sizes, max_ops, max_bytes, ops_per_job=2)
        for chunk in plan.chunks:
            if not await self._put(chunk):
                await self._after_conflict(chunk)
        for index, owner in plan.same_as.items():
            self.made[index] = (self.made[owner][0], False)
        return [self.made[index] for index in range(len(self.specs))]

    async def _put(self, chunk: Sequence[int]) -> bool:
        """Create the chunk's jobs in one transaction, if none of their keys exists."""
        keys = self.jobs.keys
        compares: list[Compare] = []
        ops: list[Put] = []
        for index in chunk:
            job = self.new[index]
            compares += [Absent(keys.job(job.id)), Absent(keys.done_job(job.id))]
            ops.append(Put(keys.job(job.id), self.records[index]))
            if job.spec.idempotency_key is not None:
                idem = keys.idem(job.spec.idempotency_key)
                compares.append(Absent(idem))
                ops.append(Put(idem, job.id.encode()))
        if not await self.jobs.store.txn(compares, ops):
            return False
        self.made.update((index, (self.new[index], True)) for index in chunk)
        return True

    async def _after_conflict(self, chunk: Sequence[int]) -> None:
        """Some key of the chunk is in etcd already (typically a batch sent again): those
        specs get their jobs, read in bulk; the others are put again, or one by one if
        that fails too (a race with another submit of the same key)."""
        keyed = [k for k in (self.specs[i].idempotency_key for i in chunk) if k is not None]
        existing = await existing_jobs(self.jobs, keyed)
        fresh = []
        for index in chunk:
            key = self.specs[index].idempotency_key
            if key is not None and key in existing:
                self.made[index] = (existing[key], False)
            else:
                fresh.append(index)
        if fresh and not await self._put(fresh):
            for index in fresh:
                self.made[index] = await self.jobs.create(self.specs[index])


async def existing_jobs(jobs: JobStore, idempotency_keys: Sequence[str]) -> dict[str, Job]:
    """The jobs these keys already name, live or finished; keys naming none are left out."""
    named: dict[str, str] = {}
    for part in _parts(idempotency_keys, MAX_TXN_OPS):
        found = await jobs.store.get_many([jobs.keys.idem(key) for key in part])
        named.update((k, kv.value.decode()) for k, kv in zip(part, found, strict=True) if kv)
    by_id: dict[str, Job] = {}
    for part in _parts(sorted(set(named.values())), MAX_TXN_OPS // 2):
        # Live and finished in one read: a job moving to done/ meanwhile is in one of them.
        places = [key for i in part for key in (jobs.keys.job(i), jobs.keys.done_job(i))]
        found = await jobs.store.get_many(places)
        for n, job_id in enumerate(part):
            kv = found[2 * n] or found[2 * n + 1]
            job = None if kv is None else decode_job(kv)
            if job is not None:
                by_id[job_id] = job
    return {key: by_id[job_id] for key, job_id in named.items() if job_id in by_id}


def _parts(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
