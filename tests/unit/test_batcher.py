"""TxnBatcher: concurrent guarded writes share a transaction, each keeps its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from schedagent.core.model import Job, JobSpec, JobState
from schedagent.core.names import Keys
from schedagent.dev.memstore import MemStore
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.batcher import Guarded, TxnBatcher
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import KV, Absent, Compare, Op, Put
from schedagent.etcd.updates import BatchedUpdates


class CountingStore(MemStore):
    """MemStore (etcd's rules: one revision counter, all-or-none txns, no key written
    twice in one) that counts transactions, takes a round trip each and can be down."""

    def __init__(self) -> None:
        super().__init__()
        self.txns: list[int] = []  # the compares of each transaction
        self.down = False

    async def txn_revision(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> int:
        await asyncio.sleep(0)  # a round trip: others may queue meanwhile
        if self.down:
            raise StoreUnavailableError("etcd is down")
        self.txns.append(len(compares))
        return await super().txn_revision(compares, success, failure)

    async def get_first(self, keys: Sequence[str]) -> KV | None:
        self.txns.append(0)  # a read: a transaction of gets, no compares
        return await super().get_first(keys)


def setup(count: int) -> tuple[CountingStore, JobStore, list[tuple[Job, int]]]:
    store = CountingStore()
    jobs = JobStore(store, Keys("/t"))
    records = []
    for i in range(count):
        job = Job(f"{i:020x}", JobSpec(cmd="true"), JobState.PENDING, 0.0)
        records.append((job, store.put(jobs.keys.job(job.id), job.to_json())))
    return store, jobs, records


async def test_a_lone_write_is_one_transaction() -> None:
    store, jobs, [(job, revision)] = setup(1)
    written, reads = await TxnBatcher(store).run(jobs.guarded(job, revision))
    assert (written, reads) == (store.revision, [])
    assert store.txns == [1]


async def test_concurrent_writes_share_transactions_within_etcds_limits() -> None:
    store, jobs, records = setup(25)
    batcher = TxnBatcher(store, max_ops=10)
    results = await asyncio.gather(*(batcher.run(jobs.guarded(j, r)) for j, r in records))
    assert all(written for written, _ in results)
    assert store.txns == [10, 10, 5]
    for (job, _), (written, _) in zip(records, results, strict=True):
        assert store.data[jobs.keys.job(job.id)].mod_revision == written


async def test_a_changed_record_fails_alone_with_what_etcd_holds_and_the_others_land() -> None:
    store, jobs, records = setup(4)
    stale_job, _ = records[2]
    records[2] = (stale_job, 1)  # read at an older revision: someone wrote since
    batcher = TxnBatcher(store)
    results = await asyncio.gather(*(batcher.run(jobs.guarded(j, r)) for j, r in records))
    assert [bool(written) for written, _ in results] == [True, True, False, True]
    found = jobs.found(results[2][1])
    assert found is not None and found[0].id == stale_job.id
    assert found[1] == store.data[jobs.keys.job(stale_job.id)].mod_revision


async def test_two_writes_of_one_key_never_share_a_transaction() -> None:
    store, jobs, [(job, revision)] = setup(1)
    batcher = TxnBatcher(store)
    first, second = await asyncio.gather(
        batcher.run(jobs.guarded(job.clone(), revision)),
        batcher.run(jobs.guarded(job.clone(), revision)),
    )
    # Both compared at the same revision: the first lands, the second finds it changed.
    assert (bool(first[0]), second[0]) == (True, 0)
    assert store.txns == [1, 1]


async def test_writes_claiming_one_key_are_kept_apart() -> None:
    # Two starts claiming the same nonce (a replay) must not meet in one transaction,
    # which etcd would refuse whole: the first claims it, the second reads who has it.
    store = CountingStore()
    batcher = TxnBatcher(store)
    claims = [
        Guarded([Absent("/n")], [Put(f"/job{i}", b"x"), Put("/n", b"%d" % i)], ["/n"])
        for i in range(2)
    ]
    first, second = await asyncio.gather(*(batcher.run(claim) for claim in claims))
    assert first[0] and second[0] == 0
    assert second[1][0] is not None and second[1][0].value == b"0"


async def test_an_unreachable_etcd_reaches_every_caller() -> None:
    store, jobs, records = setup(3)
    batcher = TxnBatcher(store)
    store.down = True
    results = await asyncio.gather(
        *(batcher.run(jobs.guarded(j, r)) for j, r in records), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    store.down = False
    job, revision = records[0]
    assert (await batcher.run(jobs.guarded(job, revision)))[0]  # and it still works after


@pytest.mark.parametrize("size", [1, 2, 130])
async def test_every_write_is_answered(size: int) -> None:
    store, jobs, records = setup(size)
    batcher = TxnBatcher(store)
    results = await asyncio.gather(*(batcher.run(jobs.guarded(j, r)) for j, r in records))
    assert all(written for written, _ in results)
    await batcher.close()
    assert sum(store.txns) == size
    assert max(store.txns) <= 128


async def test_an_update_whose_record_moved_on_mutates_what_the_failed_write_read() -> None:
    # An end written at the worker's revision after a cancel flagged the record: the
    # failed write brings the new record back, so the retry needs no read of its own.
    store, jobs, [(job, revision)] = setup(1)
    flagged = job.clone()
    flagged.cancel_requested = True
    newer = await jobs.write(flagged, revision)
    before = len(store.txns)

    def end(j: Job) -> Job:
        j.state, j.reason = JobState.CANCELED, "canceled" if j.cancel_requested else "?"
        return j

    stored, changed = await BatchedUpdates(jobs, TxnBatcher(store)).update(
        job.id, end, (job, revision)
    )
    assert changed and stored is not None and stored.reason == "canceled"
    assert store.txns[before:] == [1, 1]  # the failed write, the retry: no read between
    assert jobs.keys.done_job(job.id) in store.data and newer
