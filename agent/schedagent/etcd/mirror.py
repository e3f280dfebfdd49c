"""A live, decoded copy of one etcd prefix: a paged range read, then a watch that resumes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from schedagent.errors import StoreUnavailableError
from schedagent.etcd.store import Store, WatchCompacted, WatchEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_DELAY = 0.5


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    mod_revision: int
    create_revision: int
    value: T


# Told of each key whose entry changed: (key, old entry or None, new entry or None).
OnChange = Callable[[str, Entry[T] | None, Entry[T] | None], None]
# Told that `items` was read afresh (at start, or after a compaction): anything may differ.
OnReset = Callable[[], None]


class Mirror(Generic[T]):
    """Keeps `items` (key -> Entry with the decoded value) equal to etcd under a prefix.

    The watch resumes from the last seen revision + 1 when its stream breaks, and
    falls back to a fresh range read when that revision was compacted.
    """

    def __init__(self, store: Store, prefix: str, decode: Callable[[str, bytes], T | None]):
        self.store = store
        self.prefix = prefix
        self.decode = decode
        self.items: dict[str, Entry[T]] = {}
        self.revision = 0
        self.changed = asyncio.Event()
        self.synced = asyncio.Event()
        self.broken = False
        self._on_change: list[OnChange[T]] = []
        self._on_reset: list[OnReset] = []

    def listen(self, on_change: OnChange[T], on_reset: OnReset) -> None:
        """Call on_change for every entry that changes and on_reset after a full read,
        so a listener can keep its own structures in step without rescanning items."""
        self._on_change.append(on_change)
        self._on_reset.append(on_reset)

    async def drive(self, step: Callable[[], Awaitable[float]]) -> None:
        """Run the mirror and, once synced, step() on every change or when the seconds it
        returned have passed: the leader's schedule and fleet loops."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.run())
            await self.synced.wait()
            while True:
                self.changed.clear()
                wake_in = await step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), wake_in)

    async def run(self) -> None:
        """Run until cancelled."""
        needs_read = True
        while True:
            try:
                if needs_read:
                    await self._read()
                    needs_read = False
                await self._follow()
            except WatchCompacted as exc:
                log.info(
                    "watch on %s: revision compacted (%d); reading again",
                    self.prefix,
                    exc.compact_revision,
                )
                needs_read = True
            except StoreUnavailableError as exc:
                # One line per outage, not one per retry; _recovered() says when it ends.
                if not self.broken:
                    log.warning("watch on %s broke: %s; retrying", self.prefix, exc)
                self.broken = True
                await asyncio.sleep(RETRY_DELAY)

    def _recovered(self) -> None:
        if self.broken:
            log.info("watch on %s working again at revision %d", self.prefix, self.revision)
            self.broken = False

    async def _read(self) -> None:
        # Page by page at one revision: only what decodes is kept, so the read costs
        # memory for the view, not for the prefix (an older version's history, say).
        items: dict[str, Entry[T]] = {}
        revision = 0
        async for page in self.store.scan(self.prefix):
            revision = page.revision
            for kv in page.kvs:
                value = self.decode(kv.key, kv.value)
                if value is not None:
                    items[kv.key] = Entry(kv.mod_revision, kv.create_revision, value)
        self.items = items
        self.revision = revision
        self._recovered()
        for on_reset in self._on_reset:
            on_reset()
        self.synced.set()
        self.changed.set()

    async def _follow(self) -> None:
        async for event in self.store.watch_prefix(self.prefix, self.revision + 1):
            self.apply(event)
        # A stream that ends without an error was shut down under us: start again.
        raise StoreUnavailableError("watch stream ended")

    def note_write(self, key: str, revision: int, value: T) -> None:
        """Record our own write now, so a view read before its watch event is not stale."""
        current = self.items.get(key)
        if current is None and revision <= self.revision:
            # The watch has passed this write and the key is gone: deleted since (a job
            # moved to history), and must not come back as an entry nobody removes.
            return
        if current is None or current.mod_revision < revision:
            create = current.create_revision if current is not None else revision
            self.items[key] = Entry(revision, create, value)
            self._changed(key, current)

    def apply(self, event: WatchEvent) -> None:
        self._recovered()
        self.revision = max(self.revision, event.mod_revision)
        current = self.items.get(event.key)
        if current is not None and current.mod_revision > event.mod_revision:
            return  # already holds a newer write of our own
        if event.deleted:
            self.items.pop(event.key, None)
        else:
            value = self.decode(event.key, event.value)
            if value is None:
                self.items.pop(event.key, None)
            else:
                self.items[event.key] = Entry(event.mod_revision, event.create_revision, value)
        self._changed(event.key, current)
        self.changed.set()

    def _changed(self, key: str, old: Entry[T] | None) -> None:
        new = self.items.get(key)
        if new is not old:
            for on_change in self._on_change:
                on_change(key, old, new)
