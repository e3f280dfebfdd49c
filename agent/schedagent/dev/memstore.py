"""An in-memory stand-in for etcd.Store (reads, transactions, watches) for benches and tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from schedagent.etcd.store import (
    KV,
    PAGE,
    Absent,
    Compare,
    CreateRevisionIs,
    ModRevisionIs,
    Op,
    Page,
    Put,
    ValueIs,
    WatchEvent,
)


class MemStore:
    """The part of Store's interface that the scheduler, Mirror and JobStore use.

    Revisions count as etcd's do: one per transaction that writes, shared by its puts.
    Watch events are queued per watcher as writes happen; `delivered()` waits until
    every watcher has taken and handled all of them.
    """

    def __init__(self) -> None:
        self.data: dict[str, KV] = {}
        self.revision = 1
        self.log: list[WatchEvent] = []
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent]]] = []
        self.leases = 0

    def put(self, key: str, value: bytes) -> int:
        """Write one key now (what another process would do); its new revision."""
        self.revision += 1
        self._put(Put(key, value))
        return self.revision

    def delete(self, key: str) -> int:
        self.revision += 1
        self._delete(key)
        return self.revision

    async def delivered(self) -> None:
        """Until every watch event so far was taken and handled by its watcher."""
        for _, queue in list(self._watchers):
            await queue.join()

    async def get(self, key: str) -> KV | None:
        return self.data.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        kvs = [kv for key, kv in sorted(self.data.items()) if key.startswith(prefix)]
        return kvs, self.revision

    async def get_first(self, keys: Sequence[str]) -> KV | None:
        return next((self.data[key] for key in keys if key in self.data), None)

    async def scan(self, prefix: str, page_size: int = PAGE) -> AsyncIterator[Page]:
        # One snapshot, as etcd reads every page at the first page's revision.
        kvs, revision = await self.get_prefix(prefix)
        for first in range(0, max(len(kvs), 1), page_size):
            more = first + page_size < len(kvs)
            yield Page(kvs[first : first + page_size], revision, more)

    async def range_page(
        self, start: str, end: str, limit: int, *, descending: bool = False, revision: int = 0
    ) -> Page:
        """Like Store.range_page, but at the latest revision: no history is kept."""
        keys = sorted((k for k in self.data if start <= k < end), reverse=descending)
        return Page([self.data[k] for k in keys[:limit]], self.revision, len(keys) > limit)

    async def count(self, start: str, end: str, revision: int = 0) -> tuple[int, int]:
        return sum(1 for k in self.data if start <= k < end), self.revision

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        return (await self.txn_revision(compares, success, failure)) != 0

    async def txn_revision(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> int:
        ok = all(self._holds(c) for c in compares)
        ops = success if ok else failure
        keys = [op.key for op in ops]
        if len(set(keys)) != len(keys):
            raise ValueError("etcd: duplicate key given in txn request")
        if ops:
            self.revision += 1
            for op in ops:
                if isinstance(op, Put):
                    self._put(op)
                else:
                    self._delete(op.key)
        if not ok:
            return 0
        return self.revision if any(isinstance(op, Put) for op in success) else -1

    async def txn_or_read(
        self, compares: Sequence[Compare], success: Sequence[Op], reads: Sequence[str]
    ) -> tuple[int, list[KV | None]]:
        revision = await self.txn_revision(compares, success)
        return revision, [] if revision else [self.data.get(key) for key in reads]

    async def grant_lease(self, ttl: int) -> int:
        """A new lease id; leases never expire here."""
        self.leases += 1
        return self.leases

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        for event in self.log:
            if event.mod_revision >= start_revision and event.key.startswith(prefix):
                queue.put_nowait(event)
        watcher = (prefix, queue)
        self._watchers.append(watcher)
        try:
            while True:
                event = await queue.get()
                yield event
                queue.task_done()  # the watcher asked for the next one: this one is handled
        finally:
            self._watchers.remove(watcher)
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()

    def _holds(self, compare: Compare) -> bool:
        kv = self.data.get(compare.key)
        if isinstance(compare, ModRevisionIs):
            return (kv.mod_revision if kv else 0) == compare.revision
        if isinstance(compare, CreateRevisionIs):
            return (kv.create_revision if kv else 0) == compare.revision
        if isinstance(compare, ValueIs):
            return kv is not None and kv.value == compare.value
        assert isinstance(compare, Absent)
        return kv is None

    def _put(self, op: Put) -> None:
        old = self.data.get(op.key)
        create = old.create_revision if old else self.revision
        self.data[op.key] = KV(op.key, op.value, create, self.revision, op.lease)
        self._emit(WatchEvent(op.key, op.value, False, self.revision, create))

    def _delete(self, key: str) -> None:
        old = self.data.pop(key, None)
        if old is not None:
            self._emit(WatchEvent(key, b"", True, self.revision, old.create_revision))

    def _emit(self, event: WatchEvent) -> None:
        self.log.append(event)
        for prefix, queue in self._watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)
