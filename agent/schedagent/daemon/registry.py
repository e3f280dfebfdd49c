"""This node's record in etcd, under the session's lease, refreshed with fresh figures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

import psutil

from schedagent import __version__
from schedagent.config import AgentConfig
from schedagent.core.model import KnownHost, NodeRecord
from schedagent.core.names import Keys
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.session import Session
from schedagent.etcd.store import Put, Store
from schedagent.host.capacity import measure

log = logging.getLogger(__name__)


def local_addresses() -> tuple[str, ...]:
    addrs: list[str] = []
    for name, entries in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        addrs.extend(e.address for e in entries if e.family == socket.AF_INET)
    return tuple(sorted(addrs))


class Registry:
    """Writes `{p}/nodes/{name}`; `usage` reports (used CPUs, running jobs) of the worker."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        session: Session,
        config: AgentConfig,
        usage: Callable[[], tuple[float, int]],
    ) -> None:
        self.store = store
        self.keys = keys
        self.session = session
        self.config = config
        self.usage = usage
        self.draining = False
        self.started_at = time.time()
        self.registered = asyncio.Event()

    def record(self) -> NodeRecord:
        cap = measure(self.config.cpus)
        used, running = self.usage()
        return NodeRecord(
            name=self.config.node_name,
            hostname=socket.gethostname(),
            cpus=cap.cpus,
            memory_total=cap.memory_total,
            memory_available=cap.memory_available,
            load=cap.load,
            labels=dict(self.config.labels),
            version=__version__,
            started_at=self.started_at,
            lease=self.session.lease_id,
            addresses=local_addresses(),
            draining=self.draining,
            used_cpus=used,
            running_jobs=running,
        )

    async def register(self) -> None:
        key = self.keys.node(self.config.node_name)
        record = self.record()
        # hosts/ outlives the lease: a fleet run over --all names a stopped host too
        # (unreachable), instead of silently leaving it out.
        known = KnownHost(record.name, record.labels).to_json()
        put_known = Put(self.keys.host(record.name), known)
        await self.store.txn([], [Put(key, record.to_json(), self.session.lease_id), put_known])
        self.registered.set()

    async def run(self) -> None:
        """Refresh the record every TTL/3, and at once when the lease was replaced."""
        while True:
            renewed = self.session.renewed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(renewed.wait(), self.session.ttl / 3)
            try:
                await self.register()
            except StoreUnavailableError as exc:
                log.debug("node record not refreshed: %s", exc)

    async def set_draining(self) -> None:
        self.draining = True
        try:
            await self.register()
        except StoreUnavailableError as exc:
            log.warning("could not mark this node draining: %s", exc)
