"""An operator's drain of this node: at its deadline, hand the running jobs back.

The leader stops placing on a cordoned node by itself (core/leaderview.py); what only
the node can do is stop its own processes. It follows its key under `{p}/cordons/`
(which outlives a restart of this agent), and once a drain's deadline has come it
hands back what runs, as a SIGTERM's drain does, and starts nothing more until
uncordoned, while the agent itself keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from schedagent.core.cordon import Cordon
from schedagent.core.names import Keys
from schedagent.daemon.attemptends import NODE_DRAINED
from schedagent.daemon.worker import Worker
from schedagent.etcd.cordonstore import decode_cordon
from schedagent.etcd.mirror import Mirror
from schedagent.etcd.store import Store

log = logging.getLogger(__name__)

# While drained, how often to look for an attempt that started meanwhile (one whose
# dispatch was taken just before the drain came due).
DRAINED_RECHECK = 1.0


class DrainWatch:
    def __init__(
        self, store: Store, keys: Keys, worker: Worker, drain_timeout: Callable[[], float]
    ) -> None:
        self.key = keys.cordon(worker.node)
        self.worker = worker
        self.drain_timeout = drain_timeout
        # A prefix watch on the exact key: node1's also sees node10's, left out by key.
        self.mirror: Mirror[Cordon] = Mirror(store, self.key, decode_cordon)

    def mine(self) -> Cordon | None:
        entry = self.mirror.items.get(self.key)
        return None if entry is None else entry.value

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.mirror.run(), name="drain-mirror")
            await self.mirror.synced.wait()
            while True:
                self.mirror.changed.clear()
                wait = self.step(time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mirror.changed.wait(), wait)

    def step(self, now: float) -> float | None:
        """Act on the cordon as it stands; how long until it needs looking at again."""
        cordon = self.mine()
        due = None if cordon is None else cordon.hand_back_at(self.drain_timeout())
        drained = due is not None and due <= now
        if drained != self.worker.drained:
            log.info("node %s", "drained: handing back its jobs" if drained else "takes jobs again")
        self.worker.drained = drained
        if drained:
            self.worker.interrupt_all(NODE_DRAINED)
            return DRAINED_RECHECK
        return None if due is None else due - now
