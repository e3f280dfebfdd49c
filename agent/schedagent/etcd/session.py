"""The agent's etcd lease: granted at start, kept alive at TTL/3, replaced if it expires."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from schedagent.core import fencing
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.store import Store

log = logging.getLogger(__name__)

# While refreshes fail, try this often: etcd coming back is noticed within it (and
# within the channel's reconnect backoff, store.GRPC_OPTIONS).
RETRY_INTERVAL = 0.25


def fence_clock() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, and counting time the host was suspended,
    during which the lease ran out at etcd as well."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Session:
    """Owns one lease at a time; `generation` counts the leases this agent has held.

    Keys attached to the lease (node record, election candidacy) vanish when it
    expires; whoever owns such a key waits on `renewed` and writes it again.

    `deadline` (on `clock`) is when the lease may be gone at etcd for all this agent
    knows: etcd keeps a lease at least its TTL after it received the last refresh,
    which was after this agent sent it (docs/semantics.md, "Fenced execution").
    """

    def __init__(self, store: Store, ttl: int, clock: Callable[[], float] = fence_clock) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.lease_id = 0
        # Every lease this process held: an attempt under one of them was started here.
        self.leases: set[int] = set()
        self.generation = 0
        self.renewed = asyncio.Event()
        self.last_problem: str | None = None
        self.refreshed_at: float | None = None  # when the last good refresh was sent
        self.expiry = 0.0  # before this, the lease is alive at etcd
        self.deadline = 0.0  # this agent's jobs are stopped from here (daemon/fence.py)
        self._failing = False
        self._poked = asyncio.Event()

    @property
    def reaching(self) -> bool:
        """Whether etcd answers: the last refresh worked and was recent."""
        if self._failing or self.refreshed_at is None:
            return False
        return self.clock() - self.refreshed_at < self.ttl * 2 / 3

    def age(self) -> float | None:
        """Seconds since the last good refresh was sent (None: never)."""
        return None if self.refreshed_at is None else self.clock() - self.refreshed_at

    def poke(self) -> None:
        """Try a refresh now (a peer reaches etcd again: so may we)."""
        self._poked.set()

    async def start(self) -> None:
        sent = self.clock()
        self.lease_id = await self.store.grant_lease(self.ttl)
        self.generation += 1
        self.leases.add(self.lease_id)
        self._confirmed(sent, self.ttl)
        log.info("etcd lease %x granted (ttl %ds)", self.lease_id, self.ttl)

    async def resume(self, lease_id: int) -> bool:
        """Adopt a lease an earlier agent on this host left alive (a planned restart);
        False if it is gone, and the caller grants a new one (`start`).

        etcd keeps a lease alive for whoever refreshes it, given only its ID: the keys
        under it (node record, candidacy) stay. A lease granted with a shorter TTL than
        ours (node_ttl lowered across the restart) is not adopted either: `keep_alive`
        refreshes every ttl/3 of ours, too seldom for it. StoreUnavailableError as
        `start`.
        """
        sent = self.clock()
        remaining = await self.store.refresh_lease(lease_id)
        if remaining <= 0:
            log.info("etcd lease %x is gone: not resumed", lease_id)
            return False
        if remaining < self.ttl:
            # A refresh answers the lease's full TTL: it was granted with this one.
            log.warning(
                "etcd lease %x has a ttl of %ds, node_ttl is %ds: not resumed",
                lease_id,
                remaining,
                self.ttl,
            )
            return False
        self.lease_id = lease_id
        self.generation += 1
        self.leases.add(lease_id)
        self._confirmed(sent, remaining)
        log.info("etcd lease %x resumed (%ds left)", lease_id, remaining)
        return True

    async def keep_alive(self) -> None:
        """Refresh until cancelled; replace the lease once it is known to be gone."""
        while True:
            with contextlib.suppress(TimeoutError):
                wait = RETRY_INTERVAL if self._failing else self.ttl / 3
                await asyncio.wait_for(self._poked.wait(), wait)
            self._poked.clear()
            if await self.refresh_now() == 0:
                log.warning("etcd lease %x expired; taking a new one", self.lease_id)
                await self._replace()

    async def refresh_now(self) -> int | None:
        """One refresh, now: the lease's remaining TTL, 0 if it is gone, None if etcd
        did not answer (noted). A handover calls it too: the next agent gets all of
        the lease's time it can."""
        sent = self.clock()
        try:
            # Bounded: a refresh lost in a partition must not hold up the next one.
            remaining = await asyncio.wait_for(
                self.store.refresh_lease(self.lease_id), self.ttl / 3
            )
        except (StoreUnavailableError, TimeoutError) as exc:
            self._note_problem(str(exc) or f"no answer within {self.ttl / 3:g}s")
            return None
        if remaining > 0:
            self._note_ok(sent, remaining)
        return max(remaining, 0)

    async def _replace(self) -> None:
        try:
            await self.start()
        except StoreUnavailableError as exc:
            self._note_problem(str(exc))
            return
        self.renewed.set()
        self.renewed = asyncio.Event()

    def _confirmed(self, sent: float, remaining: int) -> None:
        self._failing = False
        self.refreshed_at = sent
        ttl = min(self.ttl, remaining)
        self.expiry = sent + fencing.expiry_after(ttl)
        self.deadline = sent + fencing.deadline_after(ttl)

    def _note_problem(self, problem: str) -> None:
        self._failing = True
        if problem != self.last_problem:
            log.warning("cannot refresh etcd lease: %s", problem)
        self.last_problem = problem

    def _note_ok(self, sent: float, remaining: int) -> None:
        if self.last_problem is not None:
            log.info("etcd lease refreshed again after: %s", self.last_problem)
        self.last_problem = None
        self._confirmed(sent, remaining)

    async def revoke(self) -> None:
        """Give the lease back so our keys vanish now rather than after the TTL."""
        try:
            await self.store.revoke_lease(self.lease_id)
        except StoreUnavailableError as exc:
            log.info("could not revoke lease %x at exit: %s", self.lease_id, exc)
