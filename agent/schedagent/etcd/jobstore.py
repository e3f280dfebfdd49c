"""Job records in etcd: create-if-absent, read, and fenced compare-and-swap updates."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from schedagent.core.model import Job, JobSpec, JobState, NodeRecord, new_job_id
from schedagent.core.names import Keys
from schedagent.errors import ConflictError, NotFoundError
from schedagent.etcd import malformed
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
    except ValueError as exc:
        malformed.note(kind, kv.key, kv.value, exc)
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

    async def on_node(self, node: str, page_size: int = 256) -> list[tuple[Job, int]]:
        """Jobs whose current attempt is ASSIGNED to or RUNNING on node, with the mod
        revision each was read at: what the reconciler compares with what runs there.

        A paged scan of every record for now; a per-node index can answer it instead.
        """
        found: list[tuple[Job, int]] = []
        start, end = self.keys.jobs, prefix_end(self.keys.jobs)
        while True:
            page = await self.store.get_range(start, end, page_size)
            for kv in page:
                job = decode_job(kv)
                if job is not None and job.node == node and job.state.holds_cpus:
                    found.append((job, kv.mod_revision))
            if len(page) < page_size:
                return found
            start = page[-1].key + "\0"

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


def _copy(job: Job) -> Job:
    # Mutations must not reach the record the caller read.
    return job.clone()
