"""A fleet schedule's leader-side cost on a real etcd: firing a slot (snapshot of the
known hosts, one group written with the step) and the concurrency check of a running
slot (its group's parts read), by number of known hosts.

    PYTHONPATH=agent python bench/schedfleet_bench.py [HOSTS ...]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time

from schedagent.core.model import KnownHost
from schedagent.core.names import Keys
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SigningKey
from schedagent.daemon.schedfleet import SlotGroups
from schedagent.daemon.schedules import ScheduleLoop
from schedagent.dev.procs import EtcdServer
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Put, Store

SLOTS = 20


class QuietBus:
    async def publish_event(self, job: object) -> None:
        return None


async def measure(url: str, hosts: int) -> tuple[float, float]:
    """Median ms per slot fired, and per concurrency check of one running group."""
    store = Store([url])
    await store.connect()
    keys = Keys(f"/bench{hosts}")  # each size on its own prefix
    try:
        for first in range(0, hosts, 100):
            puts = [
                Put(keys.host(f"h{i:05d}"), KnownHost(name=f"h{i:05d}", labels={}).to_json())
                for i in range(first, min(first + 100, hosts))
            ]
            await store.txn([], puts)
        raw = {"name": f"b{hosts}", "every": 1, "job": {"cmd": "true"}, "catch_up": "all"}
        raw.update(concurrency="allow", fleet={"selector": {"all": True}, "policy": {}})
        definition = parse_definition(raw)
        key = SigningKey.generate()
        signature = key.sign_schedule(definition.to_dict(), now=time.time() - SLOTS - 0.5)
        schedule = Schedule(definition, signature)
        await store.txn([], [Put(keys.schedule(schedule.name), schedule.to_json())])
        read_at = (await store.get(keys.schedule(schedule.name))).mod_revision  # type: ignore[union-attr]
        loop = ScheduleLoop(keys, JobStore(store, keys), QuietBus(), [])  # type: ignore[arg-type]
        loop.led_since = time.time()
        start = time.perf_counter()
        await loop.advance(schedule, read_at)
        fired = len((await store.get_prefix(keys.groups))[0])
        per_slot = (time.perf_counter() - start) * 1000 / max(fired, 1)
        groups = SlotGroups(store, keys, [])
        state, _ = await loop.schedules.state(schedule.name)
        assert state is not None
        ids = list(state.live[-1:])
        times = []
        for _ in range(5):
            begin = time.perf_counter()
            await groups.live(ids)
            times.append((time.perf_counter() - begin) * 1000)
        return per_slot, statistics.median(times)
    finally:
        await store.close()


async def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as base:
        etcd = EtcdServer(base)
        etcd.start()
        try:
            print("hosts  ms/slot fired  ms/concurrency check")
            for hosts in sizes:
                per_slot, check = await measure(etcd.url, hosts)
                print(f"{hosts:5d}  {per_slot:13.1f}  {check:20.1f}")
        finally:
            etcd.stop()


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [3, 100, 1000, 5000]))
