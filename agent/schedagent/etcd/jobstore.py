"""Job records in etcd: create-if-absent, read, and fenced compare-and-swap updates."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from schedagent.core.batch import MAX_TXN_BYTES, MAX_TXN_OPS, plan_creates
from schedagent.core.model import Job, JobSpec, JobState, NodeRecord, new_job_id
from schedagent.core.names import Keys
from schedagent.errors import ConflictError, NotFoundError
from schedagent.etcd.store import KV, Absent, Compare, ModRevisionIs, Put, Store, prefix_end

log = logging.getLogger(__name__)

MAX_CAS_TRIES = 20

Mutation = Callable[[Job], Job | None]
T = TypeVar("T")


def decode_job(kv: KV) -> Job | None:
    """The job in a KV, or None (logged) if the stored value is not a job record."""
    return _decode(kv, Job.from_json, "job")


def decode_node(kv: KV) -> NodeRecord | None:
    """The node in a KV, or None (logged) if the stored value is not a node record."""
    return _decode(kv, NodeRecord.from_json, "node")


def _decode(kv: KV, parse: Callable[[bytes], T], kind: str) -> T | None:
    # One place decides what counts as a malformed record, for jobs and nodes alike.
    try:
        return parse(kv.value)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring malformed %s record at %s: %s", kind, kv.key, exc)
        return None


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
        compares: list[Compare] = [Absent(key)]
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
        """The job and the mod revision it was read at; NotFoundError if absent."""
        kv = await self.store.get(self.keys.job(job_id))
        job = None if kv is None else decode_job(kv)
        if kv is None or job is None:
            raise NotFoundError(f"no job {job_id}")
        return job, kv.mod_revision

    async def all(self) -> tuple[list[tuple[Job, int]], int]:
        kvs, revision = await self.store.get_prefix(self.keys.jobs)
        jobs = []
        for kv in kvs:
            job = decode_job(kv)
            if job is not None:
                jobs.append((job, kv.mod_revision))
        return jobs, revision

    async def newest(
        self, limit: int, state: JobState | None = None, before: str | None = None
    ) -> list[Job]:
        """Up to limit jobs, newest first (ids sort by submit time), in state if given,
        submitted before the job `before` if given.

        Reads pages from the newest end, so a long history is not read to list a few.
        """
        page_size = min(max(limit, 64), 1000)
        end = self.keys.job(before) if before else prefix_end(self.keys.jobs)
        found: list[Job] = []
        while len(found) < limit:
            page = await self.store.get_range(self.keys.jobs, end, page_size, descending=True)
            for kv in page:
                job = decode_job(kv)
                if job is not None and (state is None or job.state == state):
                    found.append(job)
            if len(page) < page_size:
                break
            end = page[-1].key  # exclusive: the next page holds older keys only
        return found[:limit]

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
        """One compare-and-swap of a job read at revision: its new revision, or 0."""
        job.updated_at = time.time()
        key = self.keys.job(job.id)
        return await self.store.txn_revision(
            [ModRevisionIs(key, revision), *fence], [Put(key, job.to_json())]
        )

    async def write_many(
        self, batch: Sequence[tuple[Job, int]], fence: Sequence[Compare] = ()
    ) -> int:
        """Compare-and-swap several jobs at once, all or none: the revision, or 0."""
        now = time.time()
        for job, _ in batch:
            job.updated_at = now
        compares: list[Compare] = [ModRevisionIs(self.keys.job(j.id), rev) for j, rev in batch]
        puts = [Put(self.keys.job(j.id), j.to_json()) for j, _ in batch]
        return await self.store.txn_revision([*compares, *fence], puts)

    async def fence_holds(self, fence: Sequence[Compare]) -> bool:
        return await self.store.txn(list(fence), [])

    async def create_many(
        self, specs: Sequence[JobSpec], max_ops: int = MAX_TXN_OPS, max_bytes: int = MAX_TXN_BYTES
    ) -> list[tuple[Job, bool]]:
        """Create PENDING jobs in as few transactions as etcd's limits allow: (job,
        created) per spec, in order. Their ids sort in the order of the specs.

        A spec repeating an earlier spec's idempotency key gets that job. A chunk that
        meets a key (or id) already in etcd is created spec by spec, as `create` does.
        """
        now = time.time()
        ids = sorted(new_job_id(now) for _ in specs)
        jobs = [
            Job(id=job_id, spec=spec, state=JobState.PENDING, submitted_at=now, updated_at=now)
            for job_id, spec in zip(ids, specs, strict=True)
        ]
        records = [job.to_json() for job in jobs]
        sizes = [(job.spec.idempotency_key, len(records[n])) for n, job in enumerate(jobs)]
        plan = plan_creates(sizes, max_ops, max_bytes)
        made: dict[int, tuple[Job, bool]] = {}
        for chunk in plan.chunks:
            compares: list[Compare] = []
            ops: list[Put] = []
            for index in chunk:
                key, idem = self.keys.job(ids[index]), specs[index].idempotency_key
                compares.append(Absent(key))
                ops.append(Put(key, records[index]))
                if idem is not None:
                    compares.append(Absent(self.keys.idem(idem)))
                    ops.append(Put(self.keys.idem(idem), ids[index].encode()))
            if await self.store.txn(compares, ops):
                made.update((index, (jobs[index], True)) for index in chunk)
                continue
            for index in chunk:
                made[index] = await self.create(specs[index])
        for index, owner in plan.same_as.items():
            made[index] = (made[owner][0], False)
        return [made[index] for index in range(len(specs))]


def _copy(job: Job) -> Job:
    # Mutations must not reach the record the caller read.
    return job.clone()
