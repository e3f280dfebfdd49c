"""The real scheduler over an in-memory etcd: placement order, fencing, lost nodes, timers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from schedagent.config import AgentConfig, JobsConfig
from schedagent.core import transitions
from schedagent.core.model import Job, JobSpec, JobState, NodeRecord
from schedagent.core.names import Keys
from schedagent.core.placement import PlacementIndex
from schedagent.daemon import scheduler as scheduler_module
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.scheduler import Scheduler
from schedagent.dev.memstore import MemStore
from schedagent.errors import FencedError
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Compare, CreateRevisionIs, Op, Put

TIMEOUT = 30.0


class Bus:
    """The bus's publishing side, remembering what was sent."""

    def __init__(self) -> None:
        self.dispatched: list[tuple[str, str, int]] = []
        self.carried: list[tuple[bytes, int]] = []  # each dispatch's record and revision

    async def publish_dispatch(self, node: str, job: Job, revision: int) -> None:
        self.dispatched.append((node, job.id, job.attempt))
        self.carried.append((job.to_json(), revision))

    async def publish_event(self, job: Job) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def node(name: str, cpus: float = 1.0, lease: int = 1) -> NodeRecord:
    return NodeRecord(name, name, cpus, 1, 1, (0.0, 0.0, 0.0), {}, "t", 1.0, lease)


def job_id(n: int) -> str:
    return f"{n:020x}"


class Cluster:
    def __init__(self, store: MemStore, suspects: set[str]) -> None:
        self.store = store
        self.keys = Keys("t")
        self.bus = Bus()
        election = self.keys.candidate(1)
        store.put(election, b"leader")
        self.election = election
        fence = [CreateRevisionIs(election, store.data[election].create_revision)]
        config = AgentConfig(node_name="t", jobs=JobsConfig(dispatch_timeout=TIMEOUT))
        # MemStore and Bus here have the interface the scheduler uses, not the classes.
        jobs = JobStore(store, self.keys)  # type: ignore[arg-type]
        self.scheduler = Scheduler(
            config,
            store,  # type: ignore[arg-type]
            self.keys,
            jobs,
            self.bus,  # type: ignore[arg-type]
            fence,
            lambda: suspects,
        )

    def put_node(self, record: NodeRecord) -> None:
        self.store.put(self.keys.node(record.name), record.to_json())

    def submit(self, n: int, **spec: Any) -> None:
        job = Job(
            id=job_id(n), spec=JobSpec(cmd="true", **spec), state=JobState.PENDING, submitted_at=0.0
        )
        self.store.put(self.keys.job(job.id), job.to_json())

    def job(self, n: int) -> Job:
        return Job.from_json(self.store.data[self.keys.job(job_id(n))].value)

    def put_job(self, job: Job) -> None:
        self.store.put(self.keys.job(job.id), job.to_json())

    def finish(self, n: int) -> None:
        job = self.job(n)
        job.state = JobState.SUCCEEDED
        self.put_job(job)

    async def settle(self) -> None:
        """Scheduler passes until it has handled every event, its own writes' too."""
        views = (self.scheduler.job_view, self.scheduler.node_view)
        while True:
            await self.store.delivered()
            if not any(view.changed.is_set() for view in views):
                return
            await self.scheduler.reconcile()

    def placed(self) -> dict[int, str | None]:
        jobs = [Job.from_json(kv.value) for k, kv in self.store.data.items() if "/jobs/" in k]
        return {int(j.id, 16): j.node for j in jobs if j.state.holds_cpus}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(scheduler_module, "time", fake)
    return fake


@pytest.fixture
async def make(clock: Clock) -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[None]] = []

    async def start(cluster: Cluster) -> Cluster:
        views = (cluster.scheduler.job_view, cluster.scheduler.node_view)
        tasks.extend(asyncio.create_task(view.run()) for view in views)
        for view in views:
            await view.synced.wait()
        await cluster.settle()
        return cluster

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)


async def test_placement_follows_submit_order_and_an_end_places_the_next(make: Any) -> None:
    cluster = Cluster(MemStore(), set())
    cluster.put_node(node("n0"))
    cluster.put_node(node("n1"))
    for n in (4, 3, 2, 1, 0):  # ids, not arrival, give the order
        cluster.submit(n)
    await make(cluster)
    assert cluster.placed() == {0: "n0", 1: "n1"}
    assert sorted(cluster.bus.dispatched) == [("n0", job_id(0), 1), ("n1", job_id(1), 1)]
    cluster.finish(1)
    await cluster.settle()
    assert cluster.placed() == {0: "n0", 2: "n1"}


async def test_a_node_refresh_writes_and_sends_nothing(make: Any) -> None:
    cluster = Cluster(MemStore(), set())
    cluster.put_node(node("n0"))
    cluster.submit(0)
    cluster.submit(1)
    await make(cluster)
    revision, sent = cluster.store.revision, list(cluster.bus.dispatched)
    refreshed = NodeRecord("n0", "n0", 1.0, 1, 0, (5.0, 5.0, 5.0), {}, "t", 1.0, 1, used_cpus=1)
    cluster.put_node(refreshed)
    await cluster.settle()
    assert cluster.store.revision == revision + 1  # the refresh itself, nothing else
    assert cluster.bus.dispatched == sent


async def test_a_refresh_or_an_end_looks_at_no_other_job(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster(MemStore(), set())
    cluster.put_node(node("n0"))
    for n in range(200):
        cluster.submit(n)
    await make(cluster)
    calls = {"rebuilt index": 0, "jobs checked for a lost node": 0}

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)

        return call

    monkeypatch.setattr(
        PlacementIndex, "_rebuild", counted("rebuilt index", PlacementIndex._rebuild)
    )
    lost_reason = counted("jobs checked for a lost node", transitions.lost_reason)
    monkeypatch.setattr(transitions, "lost_reason", lost_reason)
    cluster.put_node(NodeRecord("n0", "n0", 1.0, 1, 0, (5.0, 5.0, 5.0), {}, "t", 1.0, 1))
    await cluster.settle()
    assert calls == {"rebuilt index": 0, "jobs checked for a lost node": 0}
    cluster.finish(0)
    await cluster.settle()
    assert cluster.placed() == {1: "n0"}
    assert calls == {"rebuilt index": 0, "jobs checked for a lost node": 1}  # the new one


async def test_without_the_fence_nothing_is_written(make: Any) -> None:
    cluster = await make(Cluster(MemStore(), set()))
    cluster.store.delete(cluster.election)
    cluster.put_node(node("n0"))
    cluster.submit(0)
    await cluster.store.delivered()
    with pytest.raises(FencedError):
        await cluster.scheduler.reconcile()
    assert cluster.job(0).state == JobState.PENDING


async def test_a_deleted_node_gives_its_jobs_back_to_the_queue(make: Any) -> None:
    cluster = Cluster(MemStore(), set())
    cluster.put_node(node("n0"))
    cluster.submit(0)
    cluster.submit(1)
    await make(cluster)
    cluster.put_node(node("n1"))
    await cluster.settle()
    assert cluster.placed() == {0: "n0", 1: "n1"}
    cluster.store.delete(cluster.keys.node("n0"))
    await cluster.settle()
    lost = cluster.job(0)
    assert (lost.state, lost.attempt, lost.attempts[0].state) == (
        JobState.PENDING,
        2,
        "handed back",
    )
    cluster.finish(1)
    await cluster.settle()
    assert cluster.placed() == {0: "n1"}


class RacingStore(MemStore):
    """Cancels one job just before the first batch of placements is written."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim
        self.raced = False

    async def txn_revision(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> int:
        puts = [op for op in success if isinstance(op, Put) and op.key.endswith(self.victim)]
        if puts and not self.raced and len(success) > 1:
            self.raced = True
            job = Job.from_json(self.data[puts[0].key].value)
            job.state = JobState.CANCELED
            self.put(puts[0].key, job.to_json())
        return await super().txn_revision(compares, success, failure)


async def test_a_placement_that_lost_a_race_holds_no_cpus(make: Any) -> None:
    cluster = Cluster(RacingStore(job_id(1)), set())
    cluster.put_node(node("n0", cpus=3))
    for n in range(5):
        cluster.submit(n)
    await make(cluster)
    assert cluster.job(1).state == JobState.CANCELED
    assert cluster.placed() == {0: "n0", 2: "n0", 3: "n0"}


async def test_a_suspect_node_gets_work_once_its_suspicion_ends(make: Any, clock: Clock) -> None:
    suspects = {"n1"}
    cluster = Cluster(MemStore(), suspects)
    cluster.put_node(node("n0"))
    cluster.put_node(node("n1"))
    cluster.submit(0)
    cluster.submit(1)
    await make(cluster)
    assert cluster.placed() == {0: "n0"}
    suspects.clear()  # time passed: no etcd event says so
    clock.now += 1
    await cluster.scheduler.reconcile()
    await cluster.settle()
    assert cluster.placed() == {0: "n0", 1: "n1"}


async def test_an_assigned_job_is_dispatched_at_once_and_again_after_the_timeout(
    make: Any, clock: Clock
) -> None:
    cluster = Cluster(MemStore(), set())
    cluster.put_node(node("n0"))
    cluster.submit(0)
    assigned = cluster.job(0)
    assigned.state, assigned.node = JobState.ASSIGNED, "n0"  # a predecessor's placement
    cluster.put_job(assigned)
    await make(cluster)
    assert cluster.bus.dispatched == [("n0", job_id(0), 1)]
    clock.now += TIMEOUT - 1
    assert await cluster.scheduler.reconcile() == pytest.approx(1.0)
    assert len(cluster.bus.dispatched) == 1
    clock.now += 1
    await cluster.scheduler.reconcile()
    assert cluster.bus.dispatched == [("n0", job_id(0), 1)] * 2


async def test_every_dispatch_carries_the_record_as_etcd_holds_it_and_its_revision(
    make: Any, clock: Clock
) -> None:
    # The worker starts from what the dispatch carries, compared with both in etcd:
    # placed by a predecessor, placed in one batch, and each sent again after the timeout.
    cluster = Cluster(MemStore(), set())
    cluster.put_node(node("n0", cpus=3))
    cluster.submit(0)
    assigned = cluster.job(0)
    assigned.state, assigned.node = JobState.ASSIGNED, "n0"  # a predecessor's placement
    cluster.put_job(assigned)
    cluster.submit(1)
    cluster.submit(2)
    await make(cluster)
    clock.now += TIMEOUT
    await cluster.scheduler.reconcile()
    assert sorted(job for _, job, _ in cluster.bus.dispatched) == [
        job_id(n) for n in (0, 0, 1, 1, 2, 2)
    ]
    for record, revision in cluster.bus.carried:
        kv = cluster.store.data[cluster.keys.job(Job.from_json(record).id)]
        assert (record, revision) == (kv.value, kv.mod_revision)


async def test_placements_their_latency_and_lost_nodes_are_counted(make: Any, clock: Clock) -> None:
    cluster = Cluster(MemStore(), set())
    metrics = cluster.scheduler.metrics = AgentMetrics()
    cluster.put_node(node("n0"))
    cluster.put_node(node("n1", cpus=2))
    cluster.put_node(NodeRecord("n2", "n2", 1.0, 1, 0, (0.0,) * 3, {}, "t", 1.0, 1, draining=True))
    for n in range(3):
        job = Job(id=job_id(n), spec=JobSpec(cmd="true"), state=JobState.PENDING, submitted_at=0.0)
        job.updated_at = clock.now - 2.5  # placeable since 2.5 s
        cluster.put_job(job)
    await make(cluster)
    sample = metrics.registry.get_sample_value
    assert sample("schedagent_placements_total") == 3
    assert sample("schedagent_placement_latency_seconds_count") == 3
    assert sample("schedagent_placement_latency_seconds_sum") == pytest.approx(7.5)
    # A drained node that leaves (an agent that stopped) is not lost; one that vanishes is.
    cluster.store.delete(cluster.keys.node("n2"))
    await cluster.settle()
    assert sample("schedagent_nodes_lost_total") == 0
    cluster.store.delete(cluster.keys.node("n0"))
    await cluster.settle()
    assert sample("schedagent_nodes_lost_total") == 1
    # Its job went back to the queue, and waits: n1 is full (2 CPUs, 2 jobs).
    assert sample("schedagent_placements_total") == 3
