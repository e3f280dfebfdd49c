"""A prefix of job-id keys read newest first, a page at a time, without etcd reading it all.

etcd honours a range's limit only in key order: asked for descending order it reads
every key of the range, values included, and sorts them (100,000 finished records
were past its 5 s deadline). Job ids sort by submit time, so a page is read from a
window below its end just wide enough to hold it, found by counting keys (which reads
etcd's in-memory index only), and sorted by etcd within that window.
"""

from __future__ import annotations

import collections
import time

from schedagent.core.model import JOB_ID_RE
from schedagent.etcd.store import KV, Store, prefix_end

ID_END = 16**20  # ids are 20 hex digits
ONE_MS = 1 << 32  # a 48-bit millisecond clock, then 32 random bits
FIRST_WIDTH = 1000 * ONE_MS  # a second of submits
GROWTH = 4
OVERSHOOT = 4  # a window may hold this many pages before it is narrowed


class NewestFirst:
    """One prefix's keys from the newest end (below `before` if given), for a merge.

    Every read is at the revision fill() is given, or at the first read's if it is 0.
    """

    def __init__(self, store: Store, prefix: str, before: str | None, page_size: int) -> None:
        self.store = store
        self.prefix = prefix
        self.end = prefix + before if before else prefix_end(prefix)
        self.page_size = page_size
        self.width = FIRST_WIDTH  # the last page's window: the next likely needs as much
        self.buffer: collections.deque[KV] = collections.deque()
        self.more = True

    def head_id(self) -> str:
        return self.buffer[0].key[len(self.prefix) :]

    async def fill(self, revision: int) -> int:
        """Read the next page if the buffer is empty; the revision read at."""
        if self.buffer or not self.more:
            return revision
        start, bottom, revision = await self._window(revision)
        page = await self.store.range_page(
            start, self.end, self.page_size, descending=True, revision=revision
        )
        self.buffer.extend(page.kvs)
        # Below a window that is not the prefix's bottom, older keys remain.
        self.more = page.more or (not bottom and bool(page.kvs))
        if page.kvs:
            self.end = page.kvs[-1].key  # exclusive: the next page holds older keys only
        if page.more:  # a shortened page: records are large, ask for that many next
            self.page_size = max(len(page.kvs), 1)
        return revision

    async def _window(self, revision: int) -> tuple[str, bool, int]:
        """The start key of the narrowest window below end holding a page (or all that
        is left), whether it is the prefix's bottom, and the revision counted at."""
        suffix = self.end[len(self.prefix) :]
        # Where windows are measured down from: the end's id, or a little past now (a
        # window up to the prefix's end still holds any ids from a clock ahead).
        top = int(suffix, 16) if JOB_ID_RE.match(suffix) else _id_at(time.time() + 60)
        narrow, width = 0, min(self.width, top)
        count, revision = await self._count(top - width, revision)
        while count < self.page_size and width < top:
            narrow, width = width, min(width * GROWTH, top)
            count, revision = await self._count(top - width, revision)
        # Grown too far past a page (a burst of submits): halve back towards one.
        while count > OVERSHOOT * self.page_size and width - narrow > ONE_MS:
            middle = (narrow + width) // 2
            found, revision = await self._count(top - middle, revision)
            if found >= self.page_size:
                width, count = middle, found
            else:
                narrow = middle
        self.width = width
        return self._start(top - width), width >= top, revision

    async def _count(self, low: int, revision: int) -> tuple[int, int]:
        count, read_at = await self.store.count(self._start(low), self.end, revision)
        return count, revision or read_at

    def _start(self, low: int) -> str:
        # The bottom window starts at the prefix, so keys that are not ids are kept too.
        return self.prefix if low <= 0 else self.prefix + f"{low:020x}"


def _id_at(seconds: float) -> int:
    return min(int(seconds * 1000) * ONE_MS, ID_END)
