"""Leader heartbeats over NATS, so a dead leader is replaced in seconds, not a lease TTL."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from schedagent.core import wire
from schedagent.errors import StoreUnavailableError, WireError
from schedagent.etcd.election import Election
from schedagent.etcd.mirror import Entry
from schedagent.etcd.store import CreateRevisionIs, Delete, Store
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

INTERVAL = 0.5
# Long enough for a busy event loop or a NATS reconnect, short enough to beat the TTL.
SILENCE = 2.0
# A leader's candidate key that goes after this much silence went with a silent leader:
# one that stops politely beats until just before its key goes.
GONE_SILENT = SILENCE / 2


class LeaderHeartbeat:
    """The leader beats every INTERVAL; any agent that hears nothing for SILENCE while
    connected deletes the leader's candidate key, so the next candidate leads.

    Deleting the key only moves the scheduler role: the old leader's writes fail its
    fence, it steps down and stands again. Its node record and jobs are untouched.
    """

    def __init__(self, bus: Bus, store: Store, election: Election) -> None:
        self.bus = bus
        self.store = store
        self.election = election
        self.last_beat: dict[int, float] = {}
        self.first_seen: dict[int, float] = {}
        self.silenced: dict[str, float] = {}  # node -> when its leadership went silent
        # Deposed by another agent, a silent leader is a suspect here too: the agent that
        # deposes it is often not the one that leads next.
        election.candidates.listen(self._on_candidate, lambda: None)

    async def beat(self, token: int) -> None:
        """Run while leading."""
        body = wire.beat(self.election.node_name, token)
        while True:
            await self.bus.publish(self.bus.subjects.leader(), body)
            await asyncio.sleep(INTERVAL)

    async def watch(self) -> None:
        """Run on every agent: listen to beats, depose a silent leader."""
        sub = await self.bus.nc.subscribe(self.bus.subjects.leader(), cb=self._on_beat)
        try:
            while True:
                await asyncio.sleep(INTERVAL)
                await self._check(time.monotonic())
        finally:
            await sub.unsubscribe()

    async def _on_beat(self, msg: Any) -> None:
        try:
            token = wire.parse_beat(msg.data).token
        except WireError:
            log.warning("dropping malformed leader heartbeat: %r", msg.data[:200])
            return
        self.last_beat[token] = time.monotonic()

    async def _check(self, now: float) -> None:
        leader = self.election.leader()
        if leader is None or self.election.is_leader or not self.bus.connected:
            self.first_seen.clear()  # silence heard while disconnected proves nothing
            return
        since = max(
            self.last_beat.get(leader.token, 0.0), self.first_seen.setdefault(leader.token, now)
        )
        if now - since > SILENCE:
            self.silenced[leader.node] = now
            await self._depose(leader.node, leader.token, now - since)

    def _on_candidate(self, key: str, old: Entry[str] | None, new: Entry[str] | None) -> None:
        if old is None or new is not None or old.value == self.election.node_name:
            return
        heard = self.last_beat.get(old.create_revision)
        now = time.monotonic()
        if heard is not None and now - heard > GONE_SILENT:
            self.silenced[old.value] = now

    def suspects(self, window: float) -> set[str]:
        """Nodes whose leadership went silent less than window seconds ago.

        A leader that stops beating has most likely died with its host, but its node
        record lives until its lease expires; a successor that places jobs there only
        has them come back a TTL later. Within the window they are left out; after it,
        a node whose record is still there is alive (it kept its lease) and counts again.
        """
        now = time.monotonic()
        return {node for node, since in self.silenced.items() if now - since < window}

    async def _depose(self, node: str, token: int, silent: float) -> None:
        key = next(
            (k for k, e in self.election.candidates.items.items() if e.create_revision == token),
            None,
        )
        if key is None:
            return
        try:
            deposed = await self.store.txn([CreateRevisionIs(key, token)], [Delete(key)])
        except StoreUnavailableError as exc:
            log.info("could not depose silent leader %s: %s", node, exc)
            return
        if deposed:
            log.warning("leader %s silent for %.1fs: deposed it (token %d)", node, silent, token)
