"""Leader election in etcd: the candidate key with the lowest create revision leads."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from schedagent.core.names import NODE_NAME_RE, Keys
from schedagent.errors import FencedError, StoreUnavailableError
from schedagent.etcd import malformed
from schedagent.etcd.mirror import Mirror
from schedagent.etcd.session import Session
from schedagent.etcd.store import Absent, Compare, CreateRevisionIs, Put, Store
from schedagent.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RETRY_DELAY = 1.0
CANDIDATE_KEY_RE = re.compile(r"/[0-9a-f]{16}$")  # Keys.candidate: the lease in hex


def decode_candidate(key: str, raw: bytes) -> str | None:
    """The node name a candidate key holds, or None (logged once) for anything else.

    Only what an agent writes counts: a stray key under the prefix must neither stop
    the election nor pass for the oldest candidate (and so for a leader nobody is).
    """
    try:
        name = raw.decode()
    except UnicodeDecodeError as exc:
        malformed.note("election candidate", key, raw, exc)
        return None
    if not CANDIDATE_KEY_RE.search(key) or not NODE_NAME_RE.match(name):
        malformed.note("election candidate", key, raw, "not a lease key holding a node name")
        return None
    return name


@dataclasses.dataclass(frozen=True)
class Leader:
    node: str
    token: int


Lead = Callable[[Sequence[Compare]], Coroutine[Any, Any, None]]


class Election:
    """Campaigns with the session's lease and runs `lead(fence)` while this node leads.

    The fencing token is the create revision of our candidate key: every write the
    leader makes also compares it, so a deposed leader cannot write (the algorithm of
    etcd's own concurrency.Election).
    """

    def __init__(self, store: Store, keys: Keys, session: Session, node_name: str) -> None:
        self.store = store
        self.keys = keys
        self.session = session
        self.node_name = node_name
        self.candidates: Mirror[str] = Mirror(store, keys.election, decode_candidate)
        self.is_leader = False

    def leader(self) -> Leader | None:
        """The current leader as this agent sees it."""
        if not self.candidates.items:
            return None
        entry = min(self.candidates.items.values(), key=lambda e: e.create_revision)
        return Leader(entry.value, entry.create_revision)

    async def run(self, lead: Lead) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.candidates.run())
            await self.candidates.synced.wait()
            while True:
                try:
                    key, token = await self._campaign()
                except StoreUnavailableError as exc:
                    log.warning("cannot campaign for leadership: %s", exc)
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                if await self._wait_until_leading(key, token):
                    await self._lead_while_leading(key, token, lead)

    async def _campaign(self) -> tuple[str, int]:
        key = self.keys.candidate(self.session.lease_id)
        lease = self.session.lease_id
        await self.store.txn([Absent(key)], [Put(key, self.node_name.encode(), lease)])
        kv = await self.store.get(key)
        if kv is None:
            raise StoreUnavailableError(f"candidate key {key} vanished right after its write")
        return key, kv.create_revision

    def _standing(self, key: str, token: int) -> str:
        """'leading', 'waiting' or 'gone' (our key was deleted, or our lease replaced)."""
        items = self.candidates.items
        if key not in items:
            seen = self.candidates.revision >= token
            return (
                "gone" if seen or key != self.keys.candidate(self.session.lease_id) else "waiting"
            )
        current = self.leader()
        return "leading" if current is not None and current.token == token else "waiting"

    async def _wait_until_leading(self, key: str, token: int) -> bool:
        while True:
            standing = self._standing(key, token)
            if standing != "waiting":
                return standing == "leading"
            self.candidates.changed.clear()
            await self.candidates.changed.wait()

    async def _lead_while_leading(self, key: str, token: int, lead: Lead) -> None:
        log.info("elected leader (fencing token %d)", token)
        self.is_leader = True
        fence = [CreateRevisionIs(key, token)]
        task = asyncio.create_task(lead(fence), name="scheduler")
        try:
            while not task.done() and self._standing(key, token) == "leading":
                self.candidates.changed.clear()
                waiter = asyncio.create_task(self.candidates.changed.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                await cancel_and_wait(waiter)
        finally:
            self.is_leader = False
            task.cancel()
            await asyncio.wait({task})  # our own cancellation, if any, still propagates
            log.info("no longer leader (fencing token %d)", token)
        if _failed(task):
            await asyncio.sleep(RETRY_DELAY)


def _failed(task: asyncio.Task[None]) -> bool:
    """Log how the scheduler ended; True if it failed (stand again after a pause)."""
    if task.cancelled() or task.exception() is None:
        return False
    exc = task.exception()
    if isinstance(exc, FencedError):
        log.warning("leadership lost: %s", exc)
        return False
    if isinstance(exc, StoreUnavailableError):
        log.warning("scheduler stopped: %s", exc)
    else:
        log.error("scheduler failed; standing again for leadership", exc_info=exc)
    return True
