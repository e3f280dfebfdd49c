"""A worker on an in-memory store and systemd, and the records it runs, for unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakeunits import FakeUnits
from schedagent.config import AgentConfig, ContainmentConfig
from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.core.names import Keys
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.worker import Worker
from schedagent.dev.memstore import MemStore
from schedagent.etcd.jobstore import JobStore
from schedagent.host.containment import Containment
from schedagent.nats.bus import Bus

LEASE = 0x0B
JOB = "0123456789abcdef0123"


class QuietBus(Bus):
    """A bus never connected: what the worker publishes (events, output) goes nowhere."""

    async def publish(self, subject: str, body: bytes) -> None:
        pass


class Msg:
    async def ack(self) -> None:
        pass


def running_record(cmd: str, lease: int = LEASE) -> Job:
    attempt = Attempt(n=1, node="n1", assigned_at=0.0, started_at=1.0, lease=lease)
    return Job(
        id=JOB, spec=JobSpec(cmd=cmd), state=JobState.RUNNING, submitted_at=0.0,
        node="n1", attempt=1, attempts=[attempt],
    )  # fmt: skip


def worker(
    store: MemStore, units: FakeUnits, output_dir: Path, lease: Callable[[], int] = lambda: LEASE
) -> Worker:
    config = AgentConfig(node_name="n1", containment=ContainmentConfig(cgroups=False))
    bus = QuietBus(config.nats, config.output, "n1")
    w = Worker(config, JobStore(store, Keys("t")), bus, lease, AgentMetrics())  # type: ignore[arg-type]
    w.containment = Containment(None)
    w.containment.units, w.containment.output_dir = units, output_dir
    output_dir.mkdir(exist_ok=True)
    return w


async def wait_for(what: str, check: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"no {what} in {timeout}s"
        await asyncio.sleep(0.01)
