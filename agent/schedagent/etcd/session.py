"""The agent's etcd lease: granted at start, kept alive at TTL/3, replaced if it expires."""

from __future__ import annotations

import asyncio
import logging
import time

from schedagent.errors import StoreUnavailableError
from schedagent.etcd.store import Store

log = logging.getLogger(__name__)


class Session:
    """Owns one lease at a time; `generation` counts the leases this agent has held.

    Keys attached to the lease (node record, election candidacy) vanish when it
    expires; whoever owns such a key waits on `renewed` and writes it again.
    """

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = ttl
        self.lease_id = 0
        self.generation = 0
        self.renewed = asyncio.Event()
        self.healthy = False
        self.last_problem: str | None = None
        self._last_ok = 0.0

    async def start(self) -> None:
        self.lease_id = await self.store.grant_lease(self.ttl)
        self.generation += 1
        self.healthy = True
        self._last_ok = time.monotonic()
        log.info("etcd lease %x granted (ttl %ds)", self.lease_id, self.ttl)

    async def keep_alive(self) -> None:
        """Refresh until cancelled; replace the lease once it is known to be gone."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                remaining = await self.store.refresh_lease(self.lease_id)
            except StoreUnavailableError as exc:
                self._note_problem(str(exc))
                continue
            if remaining > 0:
                self._note_ok()
                continue
            log.warning("etcd lease %x expired; taking a new one", self.lease_id)
            await self._replace()

    async def _replace(self) -> None:
        try:
            await self.start()
        except StoreUnavailableError as exc:
            self._note_problem(str(exc))
            return
        self.renewed.set()
        self.renewed = asyncio.Event()

    def _note_problem(self, problem: str) -> None:
        if time.monotonic() - self._last_ok > self.ttl:
            self.healthy = False
        if problem != self.last_problem:
            log.warning("cannot refresh etcd lease: %s", problem)
        self.last_problem = problem

    def _note_ok(self) -> None:
        if self.last_problem is not None:
            log.info("etcd lease refreshed again after: %s", self.last_problem)
        self.last_problem = None
        self.healthy = True
        self._last_ok = time.monotonic()

    async def revoke(self) -> None:
        """Give the lease back so our keys vanish now rather than after the TTL."""
        try:
            await self.store.revoke_lease(self.lease_id)
        except StoreUnavailableError as exc:
            log.info("could not revoke lease %x at exit: %s", self.lease_id, exc)
