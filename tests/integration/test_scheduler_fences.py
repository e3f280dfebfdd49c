"""The leader's verdicts hold only on the records they were decided from (real etcd)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from schedagent.config import AgentConfig, EtcdConfig, NatsConfig
from schedagent.core.model import Attempt, Job, JobState, NodeRecord, new_job_id
from schedagent.core.names import Keys
from schedagent.core.spec import parse_spec
from schedagent.daemon.scheduler import Scheduler
from schedagent.dev.procs import EtcdServer, NatsServer
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.mirror import Entry
from schedagent.etcd.store import Put, Store
from schedagent.nats.bus import Bus


@pytest.fixture
async def scheduler(etcd_server: EtcdServer, nats_server: NatsServer) -> AsyncIterator[Scheduler]:
    config = AgentConfig(
        node_name="leader",
        etcd=EtcdConfig(endpoints=(etcd_server.url,)),
        nats=NatsConfig(urls=(nats_server.url,)),
    )
    store = Store(config.etcd.endpoints)
    await store.connect()
    bus = Bus(config.nats, config.output, config.node_name)
    await bus.connect()
    keys = Keys(config.etcd.prefix)
    yield Scheduler(config, store, keys, JobStore(store, keys), bus, fence=[])
    await bus.close()
    await store.close()


async def lose_at_once(scheduler: Scheduler, job: Job, revision: int) -> None:
    """Feed the job to the leader's view as its watch would, with the lost-node grace
    already over, and let it recover lost nodes once."""
    key = scheduler.jobs.keys.job(job.id)
    scheduler.job_view.items[key] = Entry(revision, revision, job)
    scheduler.changed_jobs[key] = None
    now = time.time()
    scheduler._take_changes(now)
    scheduler.view.lost_since[key] = time.monotonic() - 3600
    await scheduler._recover_lost(now)


def node_record(name: str, lease: int) -> NodeRecord:
    return NodeRecord(name, "host", 2.0, 1, 1, (0.0, 0.0, 0.0), {}, "v", time.time(), lease)


async def test_node_lost_is_not_written_when_the_node_record_changed(scheduler: Scheduler) -> None:
    # The leader's node view says n1 is gone; the job view (a separate watch) is newer
    # and n1 has registered again meanwhile. Before: the verdict was written anyway,
    # and the attempt of a live agent was closed as "node lost".
    store, keys = scheduler.store, scheduler.jobs.keys
    lease = await store.grant_lease(30)
    await store.txn([], [Put(keys.node("n1"), node_record("n1", lease).to_json(), lease)])
    now = time.time()
    job = Job(
        id=new_job_id(now),
        spec=parse_spec({"cmd": "sleep 60", "retries": 1}),
        state=JobState.RUNNING,
        submitted_at=now,
        node="n1",
        attempts=[Attempt(n=1, node="n1", assigned_at=now, started_at=now, lease=lease)],
    )
    revision = await scheduler.jobs.write(job, 0)  # created: compared absent
    assert revision
    assert keys.node("n1") not in scheduler.node_view.items  # the stale view: n1 gone

    await lose_at_once(scheduler, job, revision)

    stored, _ = await scheduler.jobs.get(job.id)
    assert (stored.state, stored.attempt, stored.node) == (JobState.RUNNING, 1, "n1"), stored


async def test_node_lost_is_written_when_the_node_record_is_gone(scheduler: Scheduler) -> None:
    now = time.time()
    job = Job(
        id=new_job_id(now),
        spec=parse_spec({"cmd": "sleep 60", "retries": 1}),
        state=JobState.RUNNING,
        submitted_at=now,
        node="n2",
        attempts=[Attempt(n=1, node="n2", assigned_at=now, started_at=now, lease=7)],
    )
    revision = await scheduler.jobs.write(job, 0)
    await lose_at_once(scheduler, job, revision)
    stored, _ = await scheduler.jobs.get(job.id)
    assert (stored.state, stored.attempt) == (JobState.PENDING, 2), stored
    assert stored.attempts[0].reason == "node lost"
