"""Schedules on real servers: one job per slot across failovers, concurrency, catch-up.

Judged from the marks each run writes (dev/marks.py): the slot a run belongs to is in
its job id (SCHED_JOB_ID), so the file alone says which slots ran, when and how often.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from apiclient import ApiClient
from helpers import wait_until_served
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedhelp import create, quiesce, slot_starts, wait_for_slots

TTL = 3
FAST = {
    "node_ttl": TTL,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 0.5},
}


async def leader_node(api: ApiClient, deadline: float = 30) -> str:
    end = time.monotonic() + deadline
    while True:
        leader = (await api.call("leader"))["leader"]
        if leader is not None:
            return str(leader["node"])
        if time.monotonic() > end:
            raise AssertionError(f"no leader after {deadline}s")
        await asyncio.sleep(0.1)


async def new_leader(api: ApiClient, old: str, deadline: float = 30) -> str:
    end = time.monotonic() + deadline
    while (name := await leader_node(api)) == old:
        if time.monotonic() > end:
            raise AssertionError(f"{old} still leads after {deadline}s")
        await asyncio.sleep(0.1)
    return name


async def test_every_slot_runs_once_while_leaders_die_and_nats_restarts(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    path = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        await create(
            api, "tick", marks.marked("true", path), every=2, concurrency="allow", catch_up="all"
        )
        await wait_for_slots(path, "tick", 3, 20)
        events = []
        for round_ in range(2):
            leader = await leader_node(api)
            await asyncio.to_thread(cluster.agents[leader].kill)
            events.append(f"{time.time():.1f} killed leader {leader}")
            await new_leader(api, leader)
            await asyncio.to_thread(cluster.agents[leader].start)
            await wait_for_slots(path, "tick", 6 + 6 * round_, 30)
            if round_ == 0:
                await asyncio.to_thread(cluster.nats.kill)
                await asyncio.to_thread(cluster.nats.start)
                events.append(f"{time.time():.1f} restarted nats-server")
                await wait_until_served(api.nc, 30)
        await wait_for_slots(path, "tick", 22, 40)
        await quiesce(api, ["tick"])
    starts = slot_starts(path, "tick")
    assert -1 not in starts, f"runs whose job id is not their slot's: {starts[-1]}"
    twice = {slot: len(m) for slot, m in starts.items() if len(m) > 1}
    assert not twice, f"slots run more than once: {twice} ({events})"
    ran = sorted(starts)
    expected = list(range(ran[0], ran[-1] + 1, 2))
    missing = sorted(set(expected) - set(ran))
    # catch-up all within the default hour: every slot of the minute ran, late or not.
    assert not missing, f"slots that never ran: {missing} ({events})"
    assert len(ran) >= 22
