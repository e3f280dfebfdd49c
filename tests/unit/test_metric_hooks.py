"""The metrics hear etcd requests and NATS publishes where they go through, and attempt ends."""

from __future__ import annotations

import aetcd.exceptions
import nats.errors
import pytest

from schedagent.config import AgentConfig, ContainmentConfig, NatsConfig, OutputConfig
from schedagent.core.model import Job, JobSpec, JobState, Outcome
from schedagent.core.names import Keys
from schedagent.daemon.attemptends import AGENT_STOPPED
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.running import RunningJob
from schedagent.daemon.worker import LEASE_LOST, Worker
from schedagent.dev.memstore import MemStore
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Store
from schedagent.nats.bus import Bus


async def answer() -> str:
    return "ok"


async def unreachable() -> None:
    raise aetcd.exceptions.ConnectionFailedError("no route")


async def test_every_etcd_request_is_timed_and_a_failed_one_counted() -> None:
    metrics = AgentMetrics()
    store = Store(["http://127.0.0.1:1"])  # never connected: _call is fed coroutines
    store.on_call = metrics.etcd_call
    try:
        assert await store._call(answer()) == "ok"
        with pytest.raises(StoreUnavailableError):
            await store._call(unreachable())
    finally:
        await store.close()
    sample = metrics.registry.get_sample_value
    assert sample("schedagent_etcd_request_duration_seconds_count") == 2
    assert sample("schedagent_etcd_request_errors_total") == 1


class JetStream:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    async def publish(self, subject: str, body: bytes, timeout: float) -> None:
        if self.fail:
            raise nats.errors.TimeoutError


class Connection:
    async def publish(self, subject: str, body: bytes) -> None:
        raise nats.errors.ConnectionClosedError


async def test_dispatch_publishes_are_timed_and_failed_publishes_counted() -> None:
    metrics = AgentMetrics()
    bus = Bus(NatsConfig(), OutputConfig(), "n1")
    bus.on_round_trip = metrics.nats_round_trip
    bus.on_publish_error = metrics.nats_publish_failed
    bus.js = JetStream(fail=False)
    await bus._acked_publish("sched.dispatch.n1", b"{}")
    bus.js = JetStream(fail=True)
    with pytest.raises(nats.errors.TimeoutError):
        await bus._acked_publish("sched.dispatch.n1", b"{}")
    bus.nc = Connection()
    await bus.publish("sched.events.x", b"{}")  # fire-and-forget: logged, counted, no raise
    sample = metrics.registry.get_sample_value
    assert sample("schedagent_nats_request_duration_seconds_count") == 2
    assert sample("schedagent_nats_errors_total", {"kind": "jetstream"}) == 1
    assert sample("schedagent_nats_errors_total", {"kind": "core"}) == 1


@pytest.mark.parametrize(
    ("interrupted", "pid", "outcome", "expected"),
    [
        (None, 10, Outcome(0.0, 2.0, exit_code=0), ("SUCCEEDED", "exit_code")),
        (None, 10, Outcome(0.0, 2.0, exit_code=1), ("FAILED", "exit_code")),
        (None, None, Outcome(0.0, 0.0, error="no such directory"), ("FAILED", "cannot_start")),
        (AGENT_STOPPED, 10, Outcome(0.0, 2.0, signal=15), ("HANDED_BACK", "agent_stopped")),
        (LEASE_LOST, 10, Outcome(0.0, 2.0, signal=9), ("INTERRUPTED", "lease_lost")),
    ],
)
def test_the_worker_counts_how_each_attempt_ended(
    interrupted: str | None, pid: int | None, outcome: Outcome, expected: tuple[str, str]
) -> None:
    metrics = AgentMetrics()
    config = AgentConfig(node_name="n1", containment=ContainmentConfig(cgroups=False))
    bus = Bus(config.nats, config.output, "n1")
    worker = Worker(config, JobStore(MemStore(), Keys("t")), bus, lambda: 1, metrics)  # type: ignore[arg-type]
    job = Job(id="0" * 20, spec=JobSpec(cmd="true"), state=JobState.RUNNING, submitted_at=0.0)
    running = RunningJob(job.id, 1, 1.0, pid=pid, interrupted=interrupted)
    worker.ends.count(job, running, outcome)
    state, reason = expected
    sample = metrics.registry.get_sample_value
    assert sample("schedagent_jobs_finished_total", {"state": state, "reason": reason}) == 1
    assert (
        sample("schedagent_attempt_duration_seconds_sum") == outcome.ended_at - outcome.started_at
    )
