"""The leader's scheduler alone: its cost per event (node refresh, job completion, submit).

The real Scheduler, Mirror and JobStore run over an in-memory etcd (dev/memstore.py)
and a bus that only counts; each event is written to the store as another process
would, and timed until the scheduler has handled it and the events of its own writes.
Times are CPU seconds of this one process (everything runs in it), so other load on
the machine slows the run down but hardly changes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

from schedagent.config import AgentConfig, JobsConfig
from schedagent.core.model import Job, JobSpec, JobState, NodeRecord
from schedagent.core.names import Keys
from schedagent.daemon.scheduler import Scheduler
from schedagent.dev.memstore import MemStore
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import CreateRevisionIs

NODE_CPUS = 2.0
QUEUED = (500, 5000, 50000)
NODES = (3, 1000)
REPEATS = 20


class CountingBus:
    """Bus's publishing interface; remembers dispatches so the bench can finish them."""

    def __init__(self) -> None:
        self.dispatched: list[str] = []
        self.events = 0

    async def publish_dispatch(self, node: str, job: Job, revision: int) -> None:
        self.dispatched.append(job.id)

    async def publish_event(self, job: Job) -> None:
        self.events += 1


def node_record(i: int, load: float = 0.0) -> NodeRecord:
    return NodeRecord(
        name=f"n{i:04d}",
        hostname=f"n{i:04d}",
        cpus=NODE_CPUS,
        memory_total=1 << 34,
        memory_available=1 << 33,
        load=(load, load, load),
        labels={"zone": "abcd"[i % 4]},
        version="bench",
        started_at=1.0,
        lease=1000 + i,
    )


def pending_job(n: int) -> Job:
    return Job(id=f"{n:020x}", spec=JobSpec(cmd="true"), state=JobState.PENDING, submitted_at=1.0)


class Bench:
    """One cluster of `nodes` nodes with every slot taken and `queued` jobs waiting."""

    def __init__(self, queued: int, nodes: int) -> None:
        self.store = MemStore()
        self.keys = Keys("bench")
        self.bus = CountingBus()
        self.nodes = nodes
        election = self.keys.candidate(1)
        self.store.put(election, b"bench")
        fence = [CreateRevisionIs(election, self.store.data[election].create_revision)]
        for i in range(nodes):
            self.store.put(self.keys.node(f"n{i:04d}"), node_record(i).to_json())
        self.next_job = 0
        for _ in range(queued + int(nodes * NODE_CPUS)):
            self.submit()
        config = AgentConfig(node_name="bench", jobs=JobsConfig(dispatch_timeout=3600.0))
        # MemStore and CountingBus have the interface the scheduler uses, not the classes.
        jobs = JobStore(self.store, self.keys)  # type: ignore[arg-type]
        self.scheduler = Scheduler(
            config,
            self.store,  # type: ignore[arg-type]
            self.keys,
            jobs,
            self.bus,  # type: ignore[arg-type]
            fence,
        )
        self.refreshes = 0

    def submit(self) -> None:
        job = pending_job(self.next_job)
        self.next_job += 1
        self.store.put(self.keys.job(job.id), job.to_json())

    def refresh_node(self) -> None:
        self.refreshes += 1
        i = self.refreshes % self.nodes
        self.store.put(self.keys.node(f"n{i:04d}"), node_record(i, self.refreshes).to_json())

    def complete_one(self) -> None:
        """What a worker does at the end of a job: its record becomes SUCCEEDED."""
        key = self.keys.job(self.bus.dispatched.pop(0))
        job = Job.from_json(self.store.data[key].value)
        job.state = JobState.SUCCEEDED
        self.store.put(key, job.to_json())

    async def settle(self) -> None:
        """Run scheduler passes until it has handled every event, its own writes' too."""
        views = (self.scheduler.job_view, self.scheduler.node_view)
        while True:
            await self.store.delivered()
            if not any(view.changed.is_set() for view in views):
                return
            await self.scheduler.reconcile()

    async def per_event(self, make_event: Any) -> float:
        """Median CPU milliseconds from writing one event until the scheduler is done with it."""
        times = []
        for _ in range(REPEATS):
            start = time.process_time()
            make_event()
            await self.settle()
            times.append((time.process_time() - start) * 1000)
        return statistics.median(times)


async def measure(queued: int, nodes: int) -> dict[str, float]:
    bench = Bench(queued, nodes)
    views = (bench.scheduler.job_view, bench.scheduler.node_view)
    tasks = [asyncio.create_task(view.run()) for view in views]
    try:
        start = time.process_time()
        for view in views:
            await view.synced.wait()
        await bench.settle()
        startup = (time.process_time() - start) * 1000
        placed = len(bench.bus.dispatched)
        assert placed == int(nodes * NODE_CPUS), f"placed {placed} jobs"
        return {
            "startup_ms": startup,
            "node_refresh_ms": await bench.per_event(bench.refresh_node),
            "completion_ms": await bench.per_event(bench.complete_one),
            "submit_ms": await bench.per_event(bench.submit),
        }
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def scheduler_figures(
    queued: tuple[int, ...] = QUEUED, nodes: tuple[int, ...] = NODES
) -> dict[str, dict[str, float]]:
    """Per (queued, nodes): the scheduler's milliseconds per event of each kind."""
    return {f"{q}q_{n}n": asyncio.run(measure(q, n)) for q in queued for n in nodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queued", type=int, nargs="*", default=list(QUEUED))
    parser.add_argument("--nodes", type=int, nargs="*", default=list(NODES))
    args = parser.parse_args()
    heads = ("queued", "nodes", "startup", "refresh", "complete", "submit")
    print("".join(f"{h:>10}" for h in heads))
    for q in args.queued:
        for n in args.nodes:
            f = asyncio.run(measure(q, n))
            print(
                f"{q:>10}{n:>10}{f['startup_ms']:>8.0f}ms{f['node_refresh_ms']:>8.3f}ms"
                f"{f['completion_ms']:>8.3f}ms{f['submit_ms']:>8.3f}ms"
            )


if __name__ == "__main__":
    main()
