"""A replaced lease stops the attempts started under the old one, not those under the new."""

from __future__ import annotations

from schedagent.config import AgentConfig, ContainmentConfig
from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.core.names import Keys
from schedagent.daemon.fence import Fence
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.running import RunningJob
from schedagent.daemon.worker import LEASE_LOST, Worker
from schedagent.dev.memstore import MemStore
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.session import Session
from schedagent.nats.bus import Bus

OLD, NEW = 0x0A, 0x0B


def running_under(lease: int, job_id: str) -> RunningJob:
    attempt = Attempt(n=1, node="n1", assigned_at=0.0, started_at=1.0, lease=lease)
    job = Job(
        id=job_id,
        spec=JobSpec(cmd="sleep 60"),
        state=JobState.RUNNING,
        submitted_at=0.0,
        node="n1",
        attempt=1,
        attempts=[attempt],
    )
    return RunningJob(job.id, 1, 1.0, pid=100, record=job)


def worker() -> Worker:
    config = AgentConfig(node_name="n1", containment=ContainmentConfig(cgroups=False))
    bus = Bus(config.nats, config.output, "n1")
    return Worker(config, JobStore(MemStore(), Keys("t")), bus, lambda: NEW, AgentMetrics())  # type: ignore[arg-type]


def test_a_replaced_lease_stops_only_what_started_under_another() -> None:
    w = worker()
    old, new = running_under(OLD, "0" * 20), running_under(NEW, "1" * 20)
    w.running = {old.job_id: old, new.job_id: new}
    w.interrupt_all(LEASE_LOST, unless_lease=NEW)
    assert (old.interrupted, old.cancel.is_set()) == (LEASE_LOST, True)
    assert (new.interrupted, new.cancel.is_set()) == (None, False)


def test_without_a_lease_to_spare_every_attempt_is_stopped() -> None:
    w = worker()
    old, new = running_under(OLD, "0" * 20), running_under(NEW, "1" * 20)
    w.running = {old.job_id: old, new.job_id: new}
    w.interrupt_all(LEASE_LOST)
    assert old.cancel.is_set() and new.cancel.is_set()


def test_the_fence_spares_what_started_under_the_new_lease() -> None:
    w = worker()
    old, new = running_under(OLD, "0" * 20), running_under(NEW, "1" * 20)
    w.running = {old.job_id: old, new.job_id: new}
    fence = Fence(Session(MemStore(), 3), w, lambda: (0.0, "alone"))  # type: ignore[arg-type]
    fence._stop(LEASE_LOST, 0.0, spare=NEW)
    assert (old.interrupted, old.cancel.is_set()) == (LEASE_LOST, True)
    assert (new.interrupted, new.cancel.is_set()) == (None, False)
