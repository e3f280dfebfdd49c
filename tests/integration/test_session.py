"""A lease left alive by an agent that exited is resumed by the next one (real etcd)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from schedagent.dev.procs import EtcdServer
from schedagent.etcd.session import Session, fence_clock
from schedagent.etcd.store import Put, Store

TTL = 2  # etcd's least (its minimum lease TTL rounds up to 2 s here)
KEY = "/test/node"


@asynccontextmanager
async def connected(etcd: EtcdServer) -> AsyncIterator[Store]:
    store = Store([etcd.url])
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


async def granted_and_left(etcd: EtcdServer, ttl: int = TTL) -> int:
    """A lease granted, a key put under it, and the store closed without a revoke: what
    an agent that handed over leaves behind."""
    async with connected(etcd) as store:
        first = Session(store, ttl)
        await first.start()
        await store.txn([], [Put(KEY, b"node", first.lease_id)])
        return first.lease_id


async def until(check: Callable[[], Coroutine[Any, Any, bool]], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not await check():
        assert time.monotonic() < end, f"timed out after {deadline}s waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_lease_left_alive_is_resumed_with_its_keys(etcd_server: EtcdServer) -> None:
    lease_id = await granted_and_left(etcd_server)
    async with connected(etcd_server) as store:
        session = Session(store, TTL)
        before = fence_clock()
        assert await session.resume(lease_id)
        assert session.lease_id == lease_id and session.leases == {lease_id}
        assert session.generation == 1
        assert session.refreshed_at is not None and before <= session.refreshed_at
        assert session.reaching and session.deadline > fence_clock()
        keeping = asyncio.create_task(session.keep_alive())
        try:
            # Past two TTLs the key is still there: the resumed lease is kept alive.
            end = time.monotonic() + 2 * TTL + 0.5
            while time.monotonic() < end:
                assert await store.get(KEY) is not None, "the key under the resumed lease"
                await asyncio.sleep(0.2)
            assert session.lease_id == lease_id  # never replaced
        finally:
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
        await session.revoke()
        assert await store.get(KEY) is None


async def test_an_expired_or_revoked_lease_is_not_resumed(etcd_server: EtcdServer) -> None:
    expired = await granted_and_left(etcd_server)
    async with connected(etcd_server) as store:

        async def gone() -> bool:
            return await store.get(KEY) is None  # a read: it keeps no lease alive

        await until(gone, 3 * TTL, "the left lease to expire")
        session = Session(store, TTL)
        assert not await session.resume(expired)
        revoked = await store.grant_lease(TTL)
        await store.revoke_lease(revoked)
        assert not await session.resume(revoked)
        # Nothing adopted: the caller grants a new lease as at any start.
        assert (session.lease_id, session.leases, session.generation) == (0, set(), 0)
        assert session.refreshed_at is None and not session.reaching
        await session.start()
        assert session.generation == 1 and session.lease_id not in (expired, revoked)


async def test_a_lease_shorter_than_node_ttl_is_not_resumed(etcd_server: EtcdServer) -> None:
    # node_ttl raised across the restart: refreshed every ttl/3 of the new one, the old
    # lease would expire between two refreshes.
    lease_id = await granted_and_left(etcd_server, ttl=TTL)
    async with connected(etcd_server) as store:
        session = Session(store, 3 * TTL)
        assert not await session.resume(lease_id)
        assert session.lease_id == 0
        await store.revoke_lease(lease_id)
