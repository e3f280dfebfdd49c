"""Retention: the leader deletes job records that finished longer ago than jobs.retention."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from schedagent.config import JobsConfig
from schedagent.core.model import Job
from schedagent.core.names import Keys
from schedagent.errors import FencedError, StoreUnavailableError
from schedagent.etcd.jobstore import JobStore, decode_job
from schedagent.etcd.store import KV, Compare, Delete, ModRevisionIs, Op

log = logging.getLogger(__name__)

PAGE = 256  # keys read per request: a long history never sits in memory at once
BATCH = 64  # records deleted per transaction, like placements
MAX_INTERVAL = 300.0


class Retention:
    """Sweeps old finished jobs (and their idempotency keys) out of etcd, fenced."""

    def __init__(
        self,
        jobs_config: Callable[[], JobsConfig],
        jobs: JobStore,
        fence: Sequence[Compare],
    ) -> None:
        self.jobs_config = jobs_config
        self.jobs = jobs
        self.store = jobs.store
        self.keys = jobs.keys
        self.fence = list(fence)

    async def run(self) -> None:
        """Sweep now and then until cancelled or deposed (the scheduler notices too)."""
        while True:
            retention = self.jobs_config().retention
            if retention > 0:
                try:
                    await self.sweep(time.time() - retention)
                except StoreUnavailableError as exc:
                    log.warning("retention sweep skipped: %s", exc)
                except FencedError:
                    log.info("retention stops: this agent no longer leads")
                    return
            # A tenth of the retention, so a record outlives it by at most that much.
            await asyncio.sleep(min(max(retention / 10, 0.5), MAX_INTERVAL))

    async def sweep(self, cutoff: float) -> int:
        """Delete every final job whose record last changed before cutoff; how many."""
        # Ids sort by submit time, and a job ends after it is submitted: only ids below
        # the cutoff's can have ended before it. Long-running ones stay and are reread.
        start, end = self.keys.jobs, self.keys.job(f"{int(cutoff * 1000):012x}")
        deleted = 0
        while True:
            page = await self.store.get_range(start, end, PAGE)
            expired = [(kv, job) for kv in page if (job := _expired(kv, cutoff)) is not None]
            for first in range(0, len(expired), BATCH):
                deleted += await self._delete(expired[first : first + BATCH])
            if len(page) < PAGE:
                break
            start = page[-1].key + "\0"
        if deleted:
            log.info("retention: deleted %d job record(s) finished before %.0f", deleted, cutoff)
        return deleted

    async def _delete(self, batch: list[tuple[KV, Job]]) -> int:
        compares: list[Compare] = [ModRevisionIs(kv.key, kv.mod_revision) for kv, _ in batch]
        if await self.store.txn([*compares, *self.fence], _deletes(self.keys, batch)):
            return len(batch)
        if not await self.jobs.fence_holds(self.fence):
            raise FencedError("leadership lost during a retention sweep")
        # One record changed meanwhile (a late cancel, say): the others go one by one.
        deleted = 0
        for kv, job in batch:
            compare = ModRevisionIs(kv.key, kv.mod_revision)
            if await self.store.txn([compare, *self.fence], _deletes(self.keys, [(kv, job)])):
                deleted += 1
        return deleted


def _expired(kv: KV, cutoff: float) -> Job | None:
    job = decode_job(kv)
    if job is None or not job.state.final or job.updated_at >= cutoff:
        return None
    return job


def _deletes(keys: Keys, batch: list[tuple[KV, Job]]) -> list[Op]:
    ops: list[Op] = []
    for kv, job in batch:
        ops.append(Delete(kv.key))
        # The idempotency key names this job only: once the job is gone, the key is free.
        if job.spec.idempotency_key is not None:
            ops.append(Delete(keys.idem(job.spec.idempotency_key)))
    return ops
