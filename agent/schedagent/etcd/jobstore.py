"""Job records in etcd: live ones under jobs/, final ones under done/, an index per node.

Every write is a compare-and-swap on the live record; the one that makes a job final
moves it to done/ in the same transaction, and each write keeps `placed/{node}/{job}`
existing exactly while the job holds CPUs there. Readers of live work (the leader's
view, an agent's own attempts) so never read history.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence

from schedagent.core.batch import MAX_TXN_BYTES, MAX_TXN_OPS
from schedagent.core.model import Job, JobSpec, JobState, NodeRecord, new_job_id
from schedagent.core.names import Keys
from schedagent.errors import ConflictError, NotFoundError
from schedagent.etcd import malformed
from schedagent.etcd.batcher import Guarded
from schedagent.etcd.newest import NewestFirst
from schedagent.etcd.store import (
    KV,
    Absent,
    Compare,
    Delete,
    ModRevisionIs,
    Op,
    Put,
    Store,
)

log = logging.getLogger(__name__)

MAX_CAS_TRIES = 20
# Operations one job's write puts in a transaction, at most: the record (or its move:
# a delete and a put) and its placement key. etcd takes up to 128 (--max-txn-ops), so
# write_many fits 64 placements (2 each) or 42 jobs that end (3 each).
OPS_PER_WRITE = 3

Mutation = Callable[[Job], Job | None]


def decode_job(kv: KV) -> Job | None:
    """The job in a KV, or None (logged) if the stored value is not a job record."""
    return malformed.decode("job", kv.key, kv.value, Job.from_json)


def decode_node(kv: KV) -> NodeRecord | None:
    """The node in a KV, or None (logged) if the stored value is not a node record."""
    return malformed.decode("node", kv.key, kv.value, NodeRecord.from_json)


class JobStore:
    """Reads and writes job records; every write is a compare-and-swap."""

    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys

    async def create(self, spec: JobSpec) -> tuple[Job, bool]:
        """Create a PENDING job; with an idempotency key, return the existing job instead."""
        now = time.time()
        job = Job(id=new_job_id(now), spec=spec, state=JobState.PENDING, submitted_at=now)
        job.updated_at = now
        key = self.keys.job(job.id)
        compares: list[Compare] = [Absent(key), Absent(self.keys.done_job(job.id))]
        ops = [Put(key, job.to_json())]
        if spec.idempotency_key is not None:
            idem = self.keys.idem(spec.idempotency_key)
            compares.append(Absent(idem))
            ops.append(Put(idem, job.id.encode()))
        if await self.store.txn(compares, ops):
            return job, True
        if spec.idempotency_key is None:  # an id collision: 32 random bits lost
            return await self.create(spec)
        return await self._existing(spec.idempotency_key), False

    async def _existing(self, idempotency_key: str) -> Job:
        idem = await self.store.get(self.keys.idem(idempotency_key))
        if idem is None:
            raise ConflictError("idempotency key vanished during submit; retry")
        job, _ = await self.get(idem.value.decode())
        return job

    async def get(self, job_id: str) -> tuple[Job, int]:
        """The job (live or final) and the mod revision it was read at; NotFoundError if absent.

        Both places are read in one transaction, so a job moving to done/ meanwhile is
        found in one or the other, never in neither.
        """
        kv = await self.store.get_first([self.keys.job(job_id), self.keys.done_job(job_id)])
        job = None if kv is None else decode_job(kv)
        if kv is None or job is None:
            raise NotFoundError(f"no job {job_id}")
        return job, kv.mod_revision

    async def all(self) -> tuple[list[tuple[Job, int]], int]:
        """Every live (not final) job with its mod revision, read a page at a time at one
        revision, and that revision. Finished jobs are under done/ and not read."""
        jobs = []
        revision = 0
        async for page in self.store.scan(self.keys.jobs):
            revision = page.revision
            for kv in page.kvs:
                job = decode_job(kv)
                if job is not None and not job.state.final:
                    jobs.append((job, kv.mod_revision))
        return jobs, revision

    async def placed_on(self, node: str) -> list[tuple[str, int]]:
        """(job id, attempt) of every job holding CPUs on node, from the placement index."""
        prefix = self.keys.placed_on(node)
        placed = []
        async for page in self.store.scan(prefix):
            for kv in page.kvs:
                try:
                    placed.append((kv.key[len(prefix) :], int(kv.value)))
                except ValueError as exc:
                    malformed.note("placement", kv.key, kv.value, exc)
        return placed

    async def placed_records(self, node: str) -> list[Job]:
        """The records of the jobs holding CPUs on node, as the placement index names
        them. A key whose record disagrees (left by a version that kept no index, or
        its record deleted) is deleted on the way, unless it was written again since."""
        prefix = self.keys.placed_on(node)
        found = []
        async for page in self.store.scan(prefix):
            for kv in page.kvs:
                job = await self._get_or_none(kv.key[len(prefix) :])
                if job is not None and job.state.holds_cpus and job.node == node:
                    found.append(job)
                elif await self.store.txn(
                    [ModRevisionIs(kv.key, kv.mod_revision)], [Delete(kv.key)]
                ):
                    log.info("dropped placement key %s: its job holds no CPUs there", kv.key)
        return found

    async def _get_or_none(self, job_id: str) -> Job | None:
        try:
            job, _ = await self.get(job_id)
        except NotFoundError:
            return None
        return job

    async def on_node(self, node: str) -> list[tuple[Job, int]]:
        """Jobs whose current attempt is ASSIGNED to or RUNNING on node, with the mod
        revision each was read at: what the reconciler compares with what runs there.
        Found through the placement index, so it costs the node's jobs, not the queue's."""
        found: list[tuple[Job, int]] = []
        for job_id, _ in await self.placed_on(node):
            try:
                job, revision = await self.get(job_id)
            except NotFoundError:
                continue
            if job.node == node and job.state.holds_cpus:
                found.append((job, revision))
        return found

    async def newest(
        self, limit: int, state: JobState | None = None, before: str | None = None
    ) -> list[Job]:
        """Up to limit jobs, live and final, newest first (ids sort by submit time), in
        state if given, submitted before the job `before` if given."""
        found: list[Job] = []
        pages = self.iter_newest(state, before, min(max(limit, 64), 500))
        async with contextlib.aclosing(pages) as jobs:
            async for job in jobs:
                found.append(job)
                if len(found) == limit:
                    break
        return found

    async def iter_newest(
        self, state: JobState | None = None, before: str | None = None, page_size: int = 64
    ) -> AsyncGenerator[Job, None]:
        """Jobs, live and final, newest first, as newest() picks them, read only as far
        as the caller iterates.

        Reads pages from the newest end of jobs/ and done/ and merges them by id, every
        page at one revision (a job moving meanwhile is listed once), so a long history
        is not read to list a few. A live state is looked for under jobs/ only.
        """
        live_only = state is not None and not state.final
        prefixes = [self.keys.jobs] if live_only else [self.keys.jobs, self.keys.done]
        cursors = [NewestFirst(self.store, p, before, page_size) for p in prefixes]
        revision = 0
        while True:
            for cursor in cursors:
                revision = await cursor.fill(revision)
            ready = [c for c in cursors if c.buffer]
            if not ready:
                return
            kv = max(ready, key=lambda c: c.head_id()).buffer.popleft()
            job = decode_job(kv)
            if job is not None and (state is None or job.state == state):
                yield job

    async def update(
        self, job_id: str, mutate: Mutation, fence: Sequence[Compare] = ()
    ) -> tuple[Job, bool]:
        """Read, mutate, write-if-unchanged; repeat on conflict.

        mutate returns the new record, or None to leave the job as it is. Returns the
        job as stored afterwards and whether this call changed it. A failed fence
        (not a conflict on the job) returns (job, False).
        """
        for _ in range(MAX_CAS_TRIES):
            job, revision = await self.get(job_id)
            new = mutate(_copy(job))
            if new is None:
                return job, False
            new.updated_at = time.time()
            if await self.write(new, revision, fence):
                return new, True
            if fence and not await self.fence_holds(fence):
                return job, False
        raise ConflictError(f"job {job_id}: too many concurrent writers")

    async def write(self, job: Job, revision: int, fence: Sequence[Compare] = ()) -> int:
        """One compare-and-swap of a job read at revision: its new revision, or 0.

        A job that becomes final moves to done/ in the same transaction.
        """
        job.updated_at = time.time()
        live = ModRevisionIs(self.keys.job(job.id), revision)
        written = await self.store.txn_revision([live, *fence], _ops(self.keys, job))
        if written or not job.state.final:
            return written
        # A final record written again (read from done/): no transition does so today.
        done = self.keys.done_job(job.id)
        return await self.store.txn_revision(
            [ModRevisionIs(done, revision), *fence], [Put(done, job.to_json())]
        )

    def guarded(
        self,
        job: Job,
        revision: int,
        compares: Sequence[Compare] = (),
        ops: Sequence[Op] = (),
        reads: Sequence[str] = (),
    ) -> Guarded:
        """write()'s compare-and-swap of a live job as a Guarded write (for a TxnBatcher),
        with more compares and ops beside; if it fails, the job (live or final) is read
        back with it, then the keys of reads. `found` makes sense of that read."""
        job.updated_at = time.time()
        live = ModRevisionIs(self.keys.job(job.id), revision)
        return Guarded(
            [live, *compares],
            [*_ops(self.keys, job), *ops],
            [self.keys.job(job.id), self.keys.done_job(job.id), *reads],
        )

    @staticmethod
    def found(reads: Sequence[KV | None]) -> tuple[Job, int] | None:
        """The job a failed Guarded write read back, and its mod revision: None if it is
        gone (or its record malformed, logged)."""
        kv = reads[0] or reads[1]
        job = None if kv is None else decode_job(kv)
        return None if kv is None or job is None else (job, kv.mod_revision)

    async def write_many(
        self, batch: Sequence[tuple[Job, int]], fence: Sequence[Compare] = ()
    ) -> int:
        """Compare-and-swap several live jobs at once, all or none: the revision, or 0.

        At most 128 operations in all: OPS_PER_WRITE says how many a job may take.
        """
        now = time.time()
        for job, _ in batch:
            job.updated_at = now
        return await self._write_live(batch, fence)

    async def archive(self, batch: Sequence[tuple[Job, int]], fence: Sequence[Compare]) -> int:
        """Move final records an older version left under jobs/ to done/ as they are
        (updated_at kept: retention counts from it), all or none: the revision, or 0."""
        return await self._write_live([(j, r) for j, r in batch if j.state.final], fence)

    async def _write_live(self, batch: Sequence[tuple[Job, int]], fence: Sequence[Compare]) -> int:
        compares: list[Compare] = [ModRevisionIs(self.keys.job(j.id), rev) for j, rev in batch]
        ops = [op for job, _ in batch for op in _ops(self.keys, job)]
        return await self.store.txn_revision([*compares, *fence], ops)

    async def fence_holds(self, fence: Sequence[Compare]) -> bool:
        return await self.store.txn(list(fence), [])

    async def create_many(
        self, specs: Sequence[JobSpec], max_ops: int = MAX_TXN_OPS, max_bytes: int = MAX_TXN_BYTES
    ) -> list[tuple[Job, bool]]:
        """Create PENDING jobs in as few transactions as etcd's limits allow: (job,
        created) per spec, in order. Their ids sort in the order of the specs.

        A spec repeating an earlier spec's idempotency key gets that job; so does one
        whose key etcd already has (read in bulk, as when a batch is sent again).
        """
        # Imported here, not above: etcd/creates.py builds on this module.
        from schedagent.etcd.creates import BatchCreate

        return await BatchCreate(self, specs).run(max_ops, max_bytes)


def _ops(keys: Keys, job: Job) -> list[Op]:
    """A job's record where its state says, and its placement key kept in step."""
    body = job.to_json()
    if job.state.final:
        ops: list[Op] = [Delete(keys.job(job.id)), Put(keys.done_job(job.id), body)]
    else:
        ops = [Put(keys.job(job.id), body)]
    if job.state.holds_cpus and job.node is not None:
        ops.append(Put(keys.placement(job.node, job.id), str(job.attempt).encode()))
    elif job.attempts:
        # Leaving ASSIGNED/RUNNING: an attempt only ever starts from PENDING, so the
        # last attempt's node is the only one that can hold a key for this job.
        ops.append(Delete(keys.placement(job.attempts[-1].node, job.id)))
    return ops


def _copy(job: Job) -> Job:
    # Mutations must not reach the record the caller read.
    return job.clone()
