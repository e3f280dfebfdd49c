"""The reconciler reads the process table only when a stray may exist, and still kills
every process of an attempt its node runs no more (real processes, a fake worker)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any, cast

import pytest

from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.daemon.reconciler import Reconciler
from schedagent.daemon.running import RunningJob
from schedagent.daemon.worker import Worker
from schedagent.errors import NotFoundError
from schedagent.etcd.session import Session
from schedagent.host import jobprocs

NODE = "n1"


class Records:
    """The JobStore reads the reconciler makes, without etcd."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    async def on_node(self, node: str) -> list[tuple[Job, int]]:
        return [(job, 1) for job in self.jobs.values() if job.node == node]

    async def get(self, job_id: str) -> tuple[Job, int]:
        if job_id not in self.jobs:
            raise NotFoundError(job_id)
        return self.jobs[job_id], 1


class IdleWorker:
    """What the reconciler reads of the worker."""

    def __init__(self) -> None:
        self.node = NODE
        self.jobs = Records()
        self.bus = None
        self.running: dict[str, RunningJob] = {}
        self.starting: set[str] = set()
        self.starts = 0
        self.unrecorded: set[tuple[str, int]] = set()
        self.stopped: list[tuple[str, int, str]] = []

    def stop_attempt(self, job_id: str, attempt: int, why: str) -> None:
        self.stopped.append((job_id, attempt, why))


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The real process-table scan, counted."""
    calls: list[int] = []
    real = jobprocs.job_attempts

    def counted() -> jobprocs.Attempts:
        calls.append(1)
        return real()

    monkeypatch.setattr(jobprocs, "job_attempts", counted)
    return calls


@pytest.fixture
def worker() -> IdleWorker:
    return IdleWorker()


@pytest.fixture
def reconciler(worker: IdleWorker) -> Reconciler:
    return Reconciler(cast(Worker, worker), cast(Session, None))


def job_on_node(job_id: str, state: JobState) -> Job:
    attempt = Attempt(n=1, node=NODE, assigned_at=0.0, started_at=0.0)
    return Job(job_id, JobSpec(cmd="sleep 60"), state, 0.0, node=NODE, attempts=[attempt])


@pytest.fixture
def leftover() -> Iterator[Any]:
    """A real process carrying an attempt in its environment, as the worker starts it."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(job: Job) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SCHED_JOB_ID": job.id, "SCHED_ATTEMPT": str(job.attempt)}
        procs.append(subprocess.Popen(["sleep", "60"], env=env))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


async def test_an_idle_node_reads_the_process_table_once(
    reconciler: Reconciler, scans: list[int]
) -> None:
    # Before: every pass (every 5 s) read every process's environment, a quarter of an
    # idle agent's CPU.
    for _ in range(4):
        await reconciler.reconcile()
    assert len(scans) == 1


async def test_a_process_an_ended_attempt_left_is_killed_at_the_next_pass(
    reconciler: Reconciler, worker: IdleWorker, scans: list[int], leftover: Any
) -> None:
    await reconciler.reconcile()  # the first pass: an earlier incarnation's strays
    job = job_on_node("a" * 20, JobState.RUNNING)
    worker.jobs.jobs[job.id] = job
    proc = leftover(job)
    worker.starts += 1
    worker.running[job.id] = RunningJob(job.id, 1, 1.0, seq=1)
    await reconciler.reconcile()
    assert proc.poll() is None, "a running attempt's process is left be"
    idle_scans = len(scans)
    await reconciler.reconcile()
    assert len(scans) == idle_scans, "nothing ended: no read"
    # The attempt ends; a process it started lives on.
    del worker.running[job.id]
    job.state = JobState.SUCCEEDED
    await reconciler.reconcile()
    assert proc.wait(10) == -signal.SIGKILL
    after_kill = len(scans)
    await reconciler.reconcile()  # read again after a kill: a fork may have been missed
    await reconciler.reconcile()
    assert len(scans) == after_kill + 1


async def test_a_process_of_an_attempt_started_and_ended_between_passes_is_killed(
    reconciler: Reconciler, worker: IdleWorker, leftover: Any
) -> None:
    await reconciler.reconcile()
    job = job_on_node("b" * 20, JobState.SUCCEEDED)
    worker.jobs.jobs[job.id] = job
    proc = leftover(job)
    worker.starts += 1  # it started and ended between two passes: never seen running
    await reconciler.reconcile()
    assert proc.wait(10) == -signal.SIGKILL


async def test_a_process_of_a_job_this_cluster_does_not_know_is_left_be(
    reconciler: Reconciler, leftover: Any
) -> None:
    proc = leftover(job_on_node("c" * 20, JobState.RUNNING))  # another cluster's
    await reconciler.reconcile()
    assert proc.poll() is None
