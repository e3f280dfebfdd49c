"""Retention: the leader deletes jobs finished over jobs.retention ago, then their fleet runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from schedagent.config import JobsConfig
from schedagent.core.model import Job
from schedagent.core.names import Keys
from schedagent.daemon.groupretention import sweep_groups
from schedagent.errors import FencedError, StoreUnavailableError
from schedagent.etcd.groupstore import GroupStore
from schedagent.etcd.jobstore import OPS_PER_WRITE, JobStore, decode_job
from schedagent.etcd.store import KV, Compare, Delete, ModRevisionIs, Op

log = logging.getLogger(__name__)

PAGE = 256  # keys read per request: a long history never sits in memory at once
BATCH = 64  # records deleted per transaction, like placements
# Records moved per transaction: etcd's 128 operations, and well under its 1.5 MiB
# request limit (a record carries its output tail).
MOVE_OPS = 128 // OPS_PER_WRITE
MOVE_BYTES = 1 << 20
MAX_INTERVAL = 300.0

Found = list[tuple[KV, Job]]


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
        self.groups = GroupStore(self.store, self.keys)

    async def run(self) -> None:
        """Sweep now and then until cancelled or deposed (the scheduler notices too)."""
        rounds = 0
        while True:
            retention = self.jobs_config().retention
            try:
                if retention > 0:
                    cutoff = time.time() - retention
                    await self.sweep(cutoff)
                    await sweep_groups(self.groups, cutoff, self.fence)
                # Once per leadership, so an upgrade's old history leaves the live prefix;
                # after a first pause, not while the new leader reads its view.
                if rounds == 1:
                    await self.move_old_final_records()
                rounds += 1
            except StoreUnavailableError as exc:
                log.warning("retention sweep skipped: %s", exc)
            except FencedError:
                log.info("retention stops: this agent no longer leads")
                return
            # A tenth of the retention, so a record outlives it by at most that much.
            await asyncio.sleep(min(max(retention / 10, 0.5), MAX_INTERVAL))

    async def sweep(self, cutoff: float) -> int:
        """Delete every final job whose record last changed before cutoff; how many.

        Final records are under done/; an older version left its own under jobs/.
        """
        deleted = 0
        for prefix in (self.keys.done, self.keys.jobs):
            deleted += await self._sweep(prefix, cutoff)
        if deleted:
            log.info("retention: deleted %d job record(s) finished before %.0f", deleted, cutoff)
        return deleted

    async def _sweep(self, prefix: str, cutoff: float) -> int:
        # Ids sort by submit time, and a job ends after it is submitted: only ids below
        # the cutoff's can have ended before it. Long-running ones stay and are reread.
        start, end = prefix, prefix + f"{int(cutoff * 1000):012x}"
        deleted = 0
        while True:
            page = await self.store.range_page(start, end, PAGE)
            expired = [(kv, job) for kv in page.kvs if (job := _expired(kv, cutoff)) is not None]
            for first in range(0, len(expired), BATCH):
                deleted += await self._each_if_not_all(expired[first : first + BATCH], self._delete)
            if not page.more or not page.kvs:
                return deleted
            start = page.kvs[-1].key + "\0"

    async def move_old_final_records(self) -> int:
        """Move the final records an older version kept under jobs/ to done/; how many.

        Until they move, the leader's view skips them at every read of jobs/.
        """
        moved = 0
        async for page in self.store.scan(self.keys.jobs, PAGE):
            final = [(kv, job) for kv in page.kvs if (job := _final(kv)) is not None]
            for batch in _move_batches(final):
                moved += await self._each_if_not_all(batch, self._move)
        if moved:
            log.info(
                "moved %d final job record(s) of an older version to %s", moved, self.keys.done
            )
        return moved

    async def _delete(self, batch: Found) -> bool:
        compares: list[Compare] = [ModRevisionIs(kv.key, kv.mod_revision) for kv, _ in batch]
        return await self.store.txn([*compares, *self.fence], _deletes(self.keys, batch))

    async def _move(self, batch: Found) -> bool:
        return bool(
            await self.jobs.archive([(job, kv.mod_revision) for kv, job in batch], self.fence)
        )

    async def _each_if_not_all(
        self, batch: Found, write: Callable[[Found], Awaitable[bool]]
    ) -> int:
        """Write the batch in one transaction; if one record changed meanwhile (a late
        cancel, say), the others one by one. How many were written."""
        if await write(batch):
            return len(batch)
        if not await self.jobs.fence_holds(self.fence):
            raise FencedError("leadership lost during a retention sweep")
        return sum([await write([one]) for one in batch])


def _final(kv: KV) -> Job | None:
    job = decode_job(kv)
    return job if job is not None and job.state.final else None


def _expired(kv: KV, cutoff: float) -> Job | None:
    job = _final(kv)
    return job if job is not None and job.updated_at < cutoff else None


def _move_batches(found: Found) -> Iterator[Found]:
    batch: Found = []
    size = 0
    for kv, job in found:
        if batch and (len(batch) == MOVE_OPS or size + len(kv.value) > MOVE_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((kv, job))
        size += len(kv.value)
    if batch:
        yield batch


def _deletes(keys: Keys, batch: Found) -> list[Op]:
    ops: list[Op] = []
    for kv, job in batch:
        ops.append(Delete(kv.key))
        # The idempotency key names this job only: once the job is gone, the key is free.
        if job.spec.idempotency_key is not None:
            ops.append(Delete(keys.idem(job.spec.idempotency_key)))
    return ops
