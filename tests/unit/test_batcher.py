"""WriteBatcher: concurrent writes share a transaction, with JobStore.write's contract."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from schedagent.core.model import Job, JobSpec, JobState
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.batcher import WriteBatcher
from schedagent.etcd.store import Compare


class FakeJobs:
    """An in-memory job store with etcd's rules: one revision counter, CAS, all-or-none txns."""

    def __init__(self) -> None:
        self.revision = 1
        self.records: dict[str, tuple[Job, int]] = {}
        self.txns: list[int] = []  # the size of each transaction
        self.down = False

    def add(self, job_id: str) -> Job:
        self.revision += 1
        job = Job(job_id, JobSpec(cmd="true"), JobState.PENDING, 0.0)
        self.records[job_id] = (job, self.revision)
        return job

    def _fits(self, job: Job, revision: int) -> bool:
        return job.id in self.records and self.records[job.id][1] == revision

    async def write(self, job: Job, revision: int, fence: Sequence[Compare] = ()) -> int:
        return await self.write_many([(job, revision)])

    async def write_many(
        self, batch: Sequence[tuple[Job, int]], fence: Sequence[Compare] = ()
    ) -> int:
        await asyncio.sleep(0)  # a round trip: others may queue meanwhile
        if self.down:
            raise StoreUnavailableError("etcd is down")
        assert len({job.id for job, _ in batch}) == len(batch), "a key twice in one txn"
        self.txns.append(len(batch))
        if not all(self._fits(job, rev) for job, rev in batch):
            return 0
        self.revision += 1
        for job, _ in batch:
            self.records[job.id] = (job, self.revision)
        return self.revision


async def test_a_lone_write_is_one_transaction() -> None:
    jobs = FakeJobs()
    job = jobs.add("a")
    assert await WriteBatcher(jobs).write(job, 2) == 3
    assert jobs.txns == [1]


async def test_concurrent_writes_share_transactions() -> None:
    jobs = FakeJobs()
    batcher = WriteBatcher(jobs, max_batch=10)
    records = [(jobs.add(f"j{i}"), jobs.revision) for i in range(25)]
    revisions = await asyncio.gather(*(batcher.write(job, rev) for job, rev in records))
    assert all(revisions)
    assert jobs.txns == [10, 10, 5]
    assert all(
        jobs.records[job.id][1] == new for (job, _), new in zip(records, revisions, strict=True)
    )


async def test_a_changed_record_fails_alone_and_the_others_land() -> None:
    jobs = FakeJobs()
    batcher = WriteBatcher(jobs)
    records = [(jobs.add(f"j{i}"), jobs.revision) for i in range(4)]
    stale_job, _ = records[2]
    records[2] = (stale_job, 1)  # read at an older revision: someone wrote since
    revisions = await asyncio.gather(*(batcher.write(job, rev) for job, rev in records))
    assert [bool(r) for r in revisions] == [True, True, False, True]


async def test_two_writes_of_one_job_never_share_a_transaction() -> None:
    jobs = FakeJobs()
    batcher = WriteBatcher(jobs)
    job = jobs.add("a")
    first, second = await asyncio.gather(batcher.write(job, 2), batcher.write(job, 2))
    # Both compared at revision 2: the first lands, the second finds the record changed.
    assert (bool(first), second) == (True, 0)
    assert jobs.txns == [1, 1]


async def test_an_unreachable_etcd_reaches_every_caller() -> None:
    jobs = FakeJobs()
    batcher = WriteBatcher(jobs)
    records = [(jobs.add(f"j{i}"), jobs.revision) for i in range(3)]
    jobs.down = True
    results = await asyncio.gather(
        *(batcher.write(job, rev) for job, rev in records), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    jobs.down = False
    job, rev = records[0]
    assert await batcher.write(job, rev)  # and the batcher still works after


@pytest.mark.parametrize("size", [1, 2, 33])
async def test_every_write_is_answered(size: int) -> None:
    jobs = FakeJobs()
    batcher = WriteBatcher(jobs)
    records = [(jobs.add(f"j{i}"), jobs.revision) for i in range(size)]
    assert all(await asyncio.gather(*(batcher.write(job, rev) for job, rev in records)))
    await batcher.close()
    assert sum(jobs.txns) == size
