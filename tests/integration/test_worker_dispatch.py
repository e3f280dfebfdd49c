"""The worker and a dispatch whose ack is lost: the job it recorded RUNNING still runs
to its end, and the worker goes on (real etcd and NATS; only the message is a fake)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import nats.errors
import pytest

from schedagent.config import AgentConfig, EtcdConfig, NatsConfig, SecurityConfig
from schedagent.core.model import Attempt, Job, JobState, new_job_id
from schedagent.core.names import Keys
from schedagent.core.spec import parse_spec
from schedagent.daemon.worker import Worker
from schedagent.dev.procs import EtcdServer, NatsServer
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Put, Store
from schedagent.nats.bus import Bus


class LostAckMessage:
    """A pulled dispatch whose ack fails as when the NATS connection drops."""

    def __init__(self, job_id: str) -> None:
        self.subject = "sched.dispatch.n1"
        self.data = json.dumps({"v": 1, "job": job_id, "attempt": 1}).encode()
        self.acks = 0

    async def ack(self) -> None:
        self.acks += 1
        raise nats.errors.ConnectionClosedError

    async def nak(self, delay: float = 0) -> None:
        raise nats.errors.ConnectionClosedError

    async def term(self) -> None:
        raise nats.errors.ConnectionClosedError


@pytest.fixture
async def worker(etcd_server: EtcdServer, nats_server: NatsServer) -> AsyncIterator[Worker]:
    config = AgentConfig(
        node_name="n1",
        etcd=EtcdConfig(endpoints=(etcd_server.url,)),
        nats=NatsConfig(urls=(nats_server.url,)),
        security=SecurityConfig(require_signed_jobs=False),
    )
    store = Store(config.etcd.endpoints)
    await store.connect()
    bus = Bus(config.nats, config.output, config.node_name)
    await bus.connect()
    lease = await store.grant_lease(30)
    worker = Worker(config, JobStore(store, Keys(config.etcd.prefix)), bus, lambda: lease)
    yield worker
    await worker.containment.close()  # its (empty) schedagent-<node> cgroups, as the agent does
    await bus.close()
    await store.close()


async def test_a_lost_ack_after_the_running_write_still_runs_the_job(worker: Worker) -> None:
    now = time.time()
    job = Job(
        id=new_job_id(now),
        spec=parse_spec({"cmd": "echo ran"}),
        state=JobState.ASSIGNED,
        submitted_at=now,
        node="n1",
        attempts=[Attempt(n=1, node="n1", assigned_at=now)],
    )
    await worker.jobs.store.txn([], [Put(worker.jobs.keys.job(job.id), job.to_json())])
    message = LostAckMessage(job.id)

    await worker._on_dispatch(message)  # must not raise

    assert message.acks == 1
    deadline = time.monotonic() + 20
    while (stored := (await worker.jobs.get(job.id))[0]).state != JobState.SUCCEEDED:
        assert time.monotonic() < deadline, f"the job never finished: {stored}"
        await asyncio.sleep(0.1)
    assert stored.output_tail == "ran\n"
    # The redelivery of the same dispatch is stale now and changes nothing.
    await worker._on_dispatch(LostAckMessage(job.id))
    assert (await worker.jobs.get(job.id))[0].state == JobState.SUCCEEDED
