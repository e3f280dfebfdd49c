"""Schedules on real servers: one job per slot across failovers, concurrency, catch-up.

Judged from the marks each run writes (dev/marks.py): the slot a run belongs to is in
its job id (SCHED_JOB_ID), so the file alone says which slots ran, when and how often.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from apiclient import ApiClient
from helpers import wait_until_served
from schedagent.core.slots import slot_job_id
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedhelp import create, quiesce, slot_of, slot_starts, wait_for_slots

TTL = 3
FAST = {
    "node_ttl": TTL,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 0.5},
}


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
            leader = await api.leader_node(deadline=30)
            await asyncio.to_thread(cluster.agents[leader].kill)
            events.append(f"{time.time():.1f} killed leader {leader}")
            await api.leader_node(not_=leader, deadline=30)
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


def runs_of(path: Path, name: str) -> list[marks.Run]:
    """The schedule's runs as their marks show them, by start."""
    return [
        r for r in marks.runs(marks.read_file(path)) if slot_job_id(name, slot_of(r.job)) == r.job
    ]


async def test_forbid_replace_allow_with_a_run_longer_than_the_interval(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides={**FAST, "cpus": 8})
    paths = {policy: tmp_path / policy for policy in ("forbid", "replace", "allow")}
    async with ApiClient(cluster.nats_url) as api:
        for policy, path in paths.items():
            cmd = marks.marked("sleep 5", path, beat=True)
            await create(api, policy, cmd, every=2, concurrency=policy)
        await wait_for_slots(paths["replace"], "replace", 6, 40)
        await quiesce(api, list(paths))
        forbidden = [
            e for e in (await api.call("schedule_get", name="forbid"))["recent"] if "skipped" in e
        ]
    forbid = runs_of(paths["forbid"], "forbid")
    assert len(forbid) >= 2
    for a, b in itertools.pairwise(forbid):
        assert a.ended and b.start >= a.last, f"forbid: {a} and {b} overlap"
    assert any(e["skipped"].startswith("forbid") for e in forbidden), forbidden
    replace = runs_of(paths["replace"], "replace")
    assert len(replace) >= 6
    for a, b in itertools.pairwise(replace):
        # The earlier run was killed (no end mark) once the next slot came.
        assert not a.ended, f"replace: {a} ran to its end"
        assert a.until() <= b.start + 2.0, f"replace: {a} outlived the start of {b}"
    allow = runs_of(paths["allow"], "allow")
    overlapping = [(a, b) for a, b in itertools.pairwise(allow) if b.start < a.last]
    assert len(allow) >= 5 and len(overlapping) >= 3, allow
    assert all(r.ended for r in allow)


async def test_catch_up_none_one_all_after_the_whole_cluster_was_down(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    paths = {policy: tmp_path / policy for policy in ("none", "one", "all")}
    async with ApiClient(cluster.nats_url) as api:
        for policy, path in paths.items():
            cmd = marks.marked("true", path)
            await create(api, policy, cmd, every=2, concurrency="allow", catch_up=policy)
        for policy, path in paths.items():
            await wait_for_slots(path, policy, 2, 20)
        for agent in cluster.agents.values():
            await asyncio.to_thread(agent.kill)
        down_at = time.time()
        await asyncio.sleep(9)  # four or five slots with no agent at all
        for agent in cluster.agents.values():
            await asyncio.to_thread(agent.start)
        await wait_until_served(api.nc, 30)
        await api.leader_node(deadline=30)
        led_at = time.time()
        for policy, path in paths.items():
            await wait_for_slots(path, policy, len(slot_starts(path, policy)) + 3, 30)
        await quiesce(api, list(paths))
    for policy, path in paths.items():
        starts = slot_starts(path, policy)
        assert all(len(m) == 1 for m in starts.values()), f"{policy}: a slot ran twice"
        first = min(starts)
        missed = [t for t in range(first, int(led_at), 2) if down_at < t < led_at - 0.5]
        later = [t for t in range(first, max(starts) + 1, 2) if t >= led_at + 1.0]
        ran_missed = [t for t in missed if t in starts]
        assert len(missed) >= 4, (policy, missed)
        assert all(t in starts for t in later), f"{policy}: on-time slots missing"
        if policy == "none":
            assert ran_missed == [], f"none ran missed slots {ran_missed}"
        elif policy == "one":
            # The latest missed slot runs (it may fall just after `missed`, as the new
            # leader came up); never more than one of them.
            assert len(ran_missed) <= 1, f"one ran {ran_missed}"
            between = [t for t in starts if down_at < t < led_at + 1.0]
            assert between, "one ran no missed slot"
            assert ran_missed in ([], [missed[-1]]), ran_missed
        else:
            assert ran_missed == missed, f"all ran {ran_missed} of {missed}"
