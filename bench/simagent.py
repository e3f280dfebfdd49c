"""Many simulated nodes in one process, for the fleet benchmark (bench/fleet.py).

Each node does what an agent's registry and worker do, minus running anything: its
record under its own etcd lease, refreshed every TTL/3; its durable pull consumer
`node-<name>` on the dispatch stream, fetched through the worker's own
nats/dispatches.DispatchConsumer; and per dispatch the worker's fenced
compare-and-swap writes, RUNNING then SUCCEEDED, built by core/transitions on records
read through JobStore, with the same events (published by nats/bus.Bus). It never
leads, spawns nothing, and skips the signature check and nonce claim (agent CPU and
one etcd write per job that the leader never sees). The nodes of one process share
one etcd and one NATS connection.

`python bench/simagent.py --etcd URL --nats URL --first 0 --count 250`: prints
`ready` once every node is registered and subscribed, a JSON summary at SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from typing import Any

from schedagent import __version__
from schedagent.config import NatsConfig, OutputConfig
from schedagent.core import transitions, wire
from schedagent.core.model import Job, JobState, NodeRecord, Outcome
from schedagent.core.names import Keys
from schedagent.core.tail import Tail
from schedagent.errors import NotFoundError, StoreUnavailableError, WireError
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Put, Store, ValueIs
from schedagent.nats.bus import Bus
from schedagent.nats.dispatches import DispatchConsumer

# A fleet registering at once would all refresh at once ever after: spread the starts.
START_SPREAD = 3.0
REGISTER_IN_PARALLEL = 16
BACKOFF = transitions.Backoff(1.0, 60.0)


class SimNode:
    """One simulated node: record, lease, dispatch consumer and instant jobs."""

    def __init__(self, name: str, cpus: float, ttl: int, fleet: Fleet) -> None:
        self.name = name
        self.cpus = cpus
        self.ttl = ttl
        self.fleet = fleet
        self.lease = 0
        self.started_at = time.time()
        self.ran = 0

    def record(self) -> bytes:
        record = NodeRecord(
            name=self.name,
            hostname=f"sim-{self.name}",
            cpus=self.cpus,
            memory_total=8 << 30,
            memory_available=6 << 30,
            load=(0.1, 0.1, 0.1),
            labels={"sim": "yes"},
            version=__version__,
            started_at=self.started_at,
            lease=self.lease,
        )
        return record.to_json()

    async def register(self) -> None:
        store = self.fleet.store
        self.lease = await store.grant_lease(self.ttl)
        key = self.fleet.keys.node(self.name)
        await store.txn([], [Put(key, self.record(), self.lease)])

    async def refresh(self) -> None:
        """Lease and record, every TTL/3, as Session and Registry do."""
        key = self.fleet.keys.node(self.name)
        while True:
            await asyncio.sleep(self.ttl / 3)
            with contextlib.suppress(StoreUnavailableError):
                if await self.fleet.store.refresh_lease(self.lease) <= 0:
                    await self.register()  # expired (the machine stalled): a new lease
                    continue
                await self.fleet.store.txn([], [Put(key, self.record(), self.lease)])

    async def work(self) -> None:
        """Take dispatches as the worker does, until cancelled."""
        consumer = DispatchConsumer(self.fleet.bus, self.name)
        try:
            while True:
                messages = await consumer.fetch()
                await asyncio.gather(*(self.dispatched(msg) for msg in messages))
        finally:
            await consumer.close()

    async def dispatched(self, msg: Any) -> None:
        try:
            dispatch = wire.parse_dispatch(msg.data)
        except WireError:
            await msg.term()
            return
        try:
            await self.run(msg, dispatch)
        except StoreUnavailableError:
            await msg.nak(delay=1)

    async def run(self, msg: Any, dispatch: wire.Dispatch) -> None:
        jobs = self.fleet.jobs
        carried = _carried(dispatch)
        try:
            job, revision = carried or await jobs.get(dispatch.job)
        except NotFoundError:
            await msg.ack()
            return
        if not transitions.owns(job, self.name, dispatch.attempt, JobState.ASSIGNED):
            await msg.ack()  # stale, as the worker drops it
            return
        now = time.time()
        started = transitions.start(job.clone(), self.name, dispatch.attempt, now, self.lease)
        written = 0
        if started is not None:
            # As the worker starts it: compared with the carried record's revision and bytes.
            same = [ValueIs(jobs.keys.job(job.id), dispatch.record or b"")] if carried else []
            item = jobs.guarded(started, revision, same)
            written, _ = await self.fleet.store.txn_or_read(item.compares, item.ops, ())
        if started is None or not written:
            await msg.nak(delay=0.2)
            return
        await msg.ack()
        bus = self.fleet.bus
        await bus.publish_event(started)
        outcome = Outcome(now, time.time(), exit_code=0)
        done = transitions.finish(
            started.clone(), self.name, dispatch.attempt, outcome, Tail(), BACKOFF
        )
        await bus.publish(bus.subjects.output(job.id), wire.output_end(job.id, dispatch.attempt))
        if done is not None and await jobs.write(done, written):
            self.ran += 1
            await bus.publish_event(done)


def _carried(dispatch: wire.Dispatch) -> tuple[Job, int] | None:
    """The record the dispatch carries, if it is one of that job."""
    if dispatch.record is None:
        return None
    try:
        job = Job.from_json(dispatch.record)
    except ValueError:
        return None
    return (job, dispatch.revision) if job.id == dispatch.job else None


class Fleet:
    """The connections the simulated nodes of this process share."""

    def __init__(self, store: Store, bus: Bus, etcd_prefix: str) -> None:
        self.store = store
        self.bus = bus
        self.keys = Keys(etcd_prefix)
        self.jobs = JobStore(store, self.keys)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    store = Store([args.etcd])
    await store.connect()
    bus = Bus(NatsConfig(urls=(args.nats,), prefix=args.nats_prefix), OutputConfig(), "sim")
    await bus.connect()
    fleet = Fleet(store, bus, args.etcd_prefix)
    nodes = [
        SimNode(f"{args.name_prefix}{n:05d}", args.cpus, args.ttl, fleet)
        for n in range(args.first, args.first + args.count)
    ]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    limit = asyncio.Semaphore(REGISTER_IN_PARALLEL)

    async def register(node: SimNode) -> None:
        async with limit:
            await node.register()

    await asyncio.gather(*(register(node) for node in nodes))
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(_after(START_SPREAD * index / len(nodes), node.refresh()))
            for index, node in enumerate(nodes)
        ]
        tasks += [tg.create_task(node.work()) for node in nodes]
        print("ready", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
    await bus.close()
    await store.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    return {"nodes": len(nodes), "ran": sum(n.ran for n in nodes), "cpu_s": cpu}


async def _after(delay: float, work: Any) -> None:
    await asyncio.sleep(delay)
    await work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=250)
    parser.add_argument("--cpus", type=float, default=4.0)
    parser.add_argument("--ttl", type=int, default=10, help="the agents' node_ttl")
    parser.add_argument("--name-prefix", default="sim")
    parser.add_argument("--etcd-prefix", default="/schedagent")
    parser.add_argument("--nats-prefix", default="sched")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
