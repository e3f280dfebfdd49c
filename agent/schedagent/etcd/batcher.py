"""Job record writes that arrive together go to etcd in one transaction, not one each."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Protocol

from schedagent.core.model import Job
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.store import Compare

log = logging.getLogger(__name__)

MAX_BATCH = 32


class BatchStore(Protocol):
    """What the batcher needs of a JobStore."""

    async def write(self, job: Job, revision: int, fence: Sequence[Compare] = ()) -> int: ...

    async def write_many(
        self, batch: Sequence[tuple[Job, int]], fence: Sequence[Compare] = ()
    ) -> int: ...


@dataclasses.dataclass
class _Write:
    job: Job
    revision: int
    done: asyncio.Future[int]


class WriteBatcher:
    """`write` has JobStore.write's contract; concurrent calls share a transaction.

    No write waits for a timer: while one transaction is in flight the next writes
    queue, and they leave together as soon as it returns. So a lone write costs what
    it did, and a burst costs one round trip per MAX_BATCH writes. A batch is all or
    none in etcd; if any record in it changed, each is written alone, so one conflict
    costs its neighbours one more round trip, never a lost or wrong write.
    """

    def __init__(self, jobs: BatchStore, max_batch: int = MAX_BATCH) -> None:
        self.jobs = jobs
        self.max_batch = max_batch
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.transactions = 0  # for tests and benchmarks: how many etcd txns were sent

    async def write(self, job: Job, revision: int) -> int:
        """The record's new revision, or 0 if it changed since `revision`."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(job, revision, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="write-batcher")
        return await done

    async def close(self) -> None:
        """Wait for the writes already queued."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush(self) -> None:
        while self._queue:
            batch = self._take()
            try:
                await self._send(batch)
            except Exception as exc:
                # The callers decide what a failed write means (retry, give up): hand it on.
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                if not isinstance(exc, StoreUnavailableError):
                    log.error("batched job write failed", exc_info=exc)

    def _take(self) -> list[_Write]:
        """Up to max_batch writes, at most one per job (etcd refuses a key twice in a txn)."""
        batch: list[_Write] = []
        seen: set[str] = set()
        rest: list[_Write] = []
        for item in self._queue:
            if len(batch) < self.max_batch and item.job.id not in seen:
                batch.append(item)
                seen.add(item.job.id)
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _send(self, batch: list[_Write]) -> None:
        if len(batch) == 1:
            self.transactions += 1
            item = batch[0]
            item.done.set_result(await self.jobs.write(item.job, item.revision))
            return
        self.transactions += 1
        revision = await self.jobs.write_many([(w.job, w.revision) for w in batch])
        if revision:
            for item in batch:
                item.done.set_result(revision)
            return
        # Someone else changed one of them: find out which, one by one, together.
        self.transactions += len(batch)
        results = await asyncio.gather(*(self.jobs.write(w.job, w.revision) for w in batch))
        for item, result in zip(batch, results, strict=True):
            item.done.set_result(result)
