"""Guarded writes that arrive together go to etcd in one transaction, not one each."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Protocol

from schedagent.core.batch import MAX_TXN_BYTES, MAX_TXN_OPS
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.store import KV, Compare, Op, Put, ValueIs

log = logging.getLogger(__name__)

# A batch stays well inside etcd's request limit: the values compared count too.
MAX_BATCH_BYTES = MAX_TXN_BYTES // 2


class TxnStore(Protocol):
    """What the batcher needs of a Store."""

    async def txn_revision(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> int: ...

    async def txn_or_read(
        self, compares: Sequence[Compare], success: Sequence[Op], reads: Sequence[str]
    ) -> tuple[int, list[KV | None]]: ...


@dataclasses.dataclass(frozen=True)
class Guarded:
    """One write: its ops apply only if its compares hold. If they do not, the keys in
    reads are read in the same round trip, so the writer can decide again at once."""

    compares: Sequence[Compare]
    ops: Sequence[Op]
    reads: Sequence[str] = ()

    def keys(self) -> set[str]:
        return {op.key for op in self.ops}

    def size(self) -> int:
        puts = sum(len(op.key) + len(op.value) for op in self.ops if isinstance(op, Put))
        compared = sum(len(c.value) for c in self.compares if isinstance(c, ValueIs))
        return puts + compared


# (the revision the ops wrote at, []) or (0, the reads' KVs) when a compare failed.
Result = tuple[int, list[KV | None]]


@dataclasses.dataclass
class _Queued:
    item: Guarded
    done: asyncio.Future[Result]


class TxnBatcher:
    """`run` sends one guarded write; concurrent calls share a transaction.

    No write waits for a timer: while one transaction is in flight the next writes
    queue, and they leave together as soon as it returns. So a lone write costs one
    round trip, and a burst one per batch (etcd's operation and size limits, no key
    written twice). A batch is all or none in etcd; if any compare in it fails, each
    write is sent alone, so one conflict costs its neighbours one more round trip,
    never a lost or wrong write.
    """

    def __init__(
        self, store: TxnStore, max_ops: int = MAX_TXN_OPS, max_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        self.store = store
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        self.transactions = 0  # for tests and benchmarks: how many etcd txns were sent

    async def run(self, item: Guarded) -> Result:
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="txn-batcher")
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
                for queued in batch:
                    if not queued.done.done():
                        queued.done.set_exception(exc)
                if not isinstance(exc, StoreUnavailableError):
                    log.error("batched etcd write failed", exc_info=exc)

    def _take(self) -> list[_Queued]:
        """The oldest write, and after it every queued one that still fits."""
        batch: list[_Queued] = []
        rest: list[_Queued] = []
        written: set[str] = set()
        compares = ops = size = 0
        for queued in self._queue:
            item = queued.item
            fits = (
                compares + len(item.compares) <= self.max_ops
                and ops + len(item.ops) <= self.max_ops
                and size + item.size() <= self.max_bytes
                and not written & item.keys()
            )
            if batch and not fits:
                rest.append(queued)
                continue
            batch.append(queued)
            written |= item.keys()
            compares, ops, size = (
                compares + len(item.compares),
                ops + len(item.ops),
                size + item.size(),
            )
        self._queue = rest
        return batch

    async def _send(self, batch: list[_Queued]) -> None:
        if len(batch) == 1:
            await self._send_alone(batch[0])
            return
        self.transactions += 1
        compares = [c for queued in batch for c in queued.item.compares]
        ops = [op for queued in batch for op in queued.item.ops]
        revision = await self.store.txn_revision(compares, ops)
        if revision:
            for queued in batch:
                queued.done.set_result((revision, []))
            return
        # A compare failed: find out whose, one by one, together.
        await asyncio.gather(*(self._send_alone(queued) for queued in batch))

    async def _send_alone(self, queued: _Queued) -> None:
        self.transactions += 1
        item = queued.item
        try:
            result = await self.store.txn_or_read(item.compares, item.ops, item.reads)
        except Exception as exc:
            queued.done.set_exception(exc)
            if not isinstance(exc, StoreUnavailableError):
                log.error("etcd write failed", exc_info=exc)
            return
        queued.done.set_result(result)
