"""Fleet schedules on real servers: each slot one fleet run, across failovers and joins.

Evidence of what ran is each part's own marks, one file per host (tests/fleethelp.py):
a part's job id holds its slot (its group's id is derived from (schedule, slot)), so
the files alone say which slots ran on which host, and how often.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from typing import Any

from apiclient import ApiClient
from fleethelp import part_cmd, schedctl, starts, status
from schedagent.core.fleet import part_job_id
from schedagent.core.schedfleet import slot_group_id
from schedagent.dev.cluster import LocalCluster
from schedhelp import action, slot_of

TTL = 3
FAST = {
    "node_ttl": TTL,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 0.5},
}


def slots_by_host(cluster: LocalCluster, name: str) -> dict[str, dict[int, int]]:
    """host -> slot -> how many times the host started that slot's part (its marks);
    a run whose job id is not the slot's part on that host counts under slot -1."""
    found: dict[str, dict[int, int]] = {}
    for host, runs in starts(cluster).items():
        counted: dict[int, int] = collections.Counter()
        for run in runs:
            slot = slot_of(run.job)
            genuine = run.job == part_job_id(slot_group_id(name, slot), host)
            counted[slot if genuine else -1] += 1
        found[host] = dict(counted)
    return found


async def wait_for(what: str, deadline: float, check: Any) -> None:
    """Until check() (run in a thread: it may read files or call schedctl) holds."""
    end = time.monotonic() + deadline
    while not await asyncio.to_thread(check):
        assert time.monotonic() < end, f"timed out after {deadline}s waiting for {what}"
        await asyncio.sleep(0.2)


def create(cluster: LocalCluster, name: str, *args: str) -> None:
    made = schedctl(cluster, "schedule", "create", name, "--cmd", part_cmd(), *args)
    assert made.returncode == 0, made.stderr


def shown(cluster: LocalCluster, name: str) -> dict[str, Any]:
    reply = schedctl(cluster, "schedule", "show", name, "--json")
    assert reply.returncode == 0, reply.stderr
    return dict(json.loads(reply.stdout))


async def quiesce(cluster: LocalCluster, api: ApiClient, name: str) -> dict[str, Any]:
    """Pause the schedule, then wait until every group its slots made has ended."""
    await action(api, "pause", name)

    def ended() -> bool:
        recent = shown(cluster, name)["recent"]
        return all(e.get("state") in ("done", "gone") for e in recent if "group" in e)

    await wait_for(f"{name}'s fleet runs to end", 60, ended)
    return shown(cluster, name)


async def test_an_all_schedule_runs_once_per_slot_on_every_host_across_a_leader_kill(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    name = "tick"
    async with ApiClient(cluster.nats_url) as api:
        args = ["--every", "3s", "--all", "--concurrency", "allow", "--catch-up", "all"]
        await asyncio.to_thread(create, cluster, name, *args)

        def slots_on_all(count: int) -> bool:
            ran = slots_by_host(cluster, name)
            common = set.intersection(*(set(s) for s in ran.values()))
            return len(common - {-1}) >= count

        await wait_for("2 slots on every host", 30, lambda: slots_on_all(2))
        leader = await api.leader_node(deadline=30)
        # Between slots: the last slot's parts have all ended, the next is up to 3 s away.
        await wait_for("the last parts to end", 10, lambda: all(r.ended for r in _runs(cluster)))
        await asyncio.to_thread(cluster.agents[leader].kill)
        killed_at = time.time()
        await api.leader_node(deadline=TTL + 15, not_=leader)
        await asyncio.to_thread(cluster.agents[leader].start)
        await wait_for("slots after the failover", 60, lambda: _after(cluster, name, killed_at, 3))
        await asyncio.to_thread(cluster.add_agent, "node4")  # a host joins while one leads
        joined_at = time.time()
        await wait_for("node4's slots", 30, lambda: _after(cluster, name, joined_at, 2))
        final = await quiesce(cluster, api, name)
        await _fleet_only_verbs_are_refused(cluster, name)
    ran = slots_by_host(cluster, name)
    newcomer = ran.pop("node4")
    current = joined_at - joined_at % 3  # the slot current when node4 joined
    assert newcomer and min(newcomer) >= current, (current, sorted(newcomer))
    assert all(-1 not in slots for slots in ran.values()), f"a part of no slot ran: {ran}"
    twice = {h: [s for s, n in slots.items() if n > 1] for h, slots in ran.items()}
    assert not any(twice.values()), f"a host ran a slot twice: {twice}"
    survivors = [h for h in ran if h != leader]
    first = min(min(ran[h]) for h in survivors)
    last = max(max(ran[h]) for h in survivors)
    expected = set(range(first, last + 1, 3))
    for host in survivors:  # catch-up all: no slot missed, the failover's included
        assert set(ran[host]) == expected, (host, sorted(expected - set(ran[host])))
    groups = final["last_groups"]
    assert groups and all(g.startswith("g-") for g in groups)
    last_group = await asyncio.to_thread(status, cluster, groups[-1])
    assert last_group["counts"] == {"succeeded": 4}, last_group  # node4 included
    assert last_group["group"]["schedule"]["name"] == name
    listed = await asyncio.to_thread(schedctl, cluster, "schedule", "list")
    assert "fleet: all" in listed.stdout, listed.stdout
    text = await asyncio.to_thread(schedctl, cluster, "schedule", "show", name)
    assert f"fleet run {groups[-1]}  done: 4 succeeded" in text.stdout, text.stdout
    table = await asyncio.to_thread(schedctl, cluster, "status", groups[-1])
    assert f"(schedule {name}, slot " in table.stdout, table.stdout


async def _fleet_only_verbs_are_refused(cluster: LocalCluster, name: str) -> None:
    """A run outside the slots and --after a fleet schedule are not built: refused."""
    run = await asyncio.to_thread(schedctl, cluster, "schedule", "run", name)
    assert run.returncode != 0 and "is a fleet schedule" in run.stderr, run.stderr
    args = ["schedule", "create", "child", "--every", "3s", "--cmd", "true", "--after", name]
    child = await asyncio.to_thread(schedctl, cluster, *args)
    assert child.returncode != 0, child.stdout
    assert "a fleet schedule cannot be waited for" in child.stderr, child.stderr


def _runs(cluster: LocalCluster) -> list[Any]:
    return [run for runs in starts(cluster).values() for run in runs]


def _after(cluster: LocalCluster, name: str, since: float, count: int) -> bool:
    """Whether every host has run count slots due after since."""
    ran = slots_by_host(cluster, name)
    return all(len([s for s in slots if s > since]) >= count for slots in ran.values())


async def test_a_host_that_joins_after_missed_slots_gets_one_catch_up_run_not_all(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(["node1", "node2"], agent_overrides=FAST)
    name = "join"
    async with ApiClient(cluster.nats_url) as api:
        args = ["--every", "2s", "--all", "--concurrency", "allow", "--offline-wait", "40s"]
        await asyncio.to_thread(create, cluster, name, *args)
        await wait_for("a slot on both hosts", 30, lambda: _after(cluster, name, 0, 1))
        for agent in cluster.agents.values():
            agent.terminate()
        for agent in cluster.agents.values():
            await asyncio.to_thread(agent.wait, 20)
        down_at = time.time()
        # Several slots come due while no agent leads (the scenario, not a guess: a wait
        # for the clock).
        await wait_for("four missed slots", 20, lambda: time.time() > down_at + 8)
        await asyncio.to_thread(cluster.add_agent, "node3")
        joined_at = time.time()
        for host in ("node1", "node2"):
            await asyncio.to_thread(cluster.agents[host].start)
        await wait_for("node3's slots", 60, lambda: _after(cluster, name, joined_at, 2))
        final = await quiesce(cluster, api, name)
    ran = slots_by_host(cluster, name)
    assert all(-1 not in slots for slots in ran.values()), ran
    assert not any(n > 1 for slots in ran.values() for n in slots.values()), ran
    missed = sorted({s for slots in ran.values() for s in slots if down_at < s < joined_at})
    assert len(missed) <= 1, f"more than the catch-up (one) of the missed slots ran: {missed}"
    early = [s for s in ran["node3"] if s < joined_at]
    assert len(early) <= 1, f"node3 was flooded with slots from before it joined: {early}"
    assert missed == early, (missed, early)  # the one caught up ran on the newcomer too
    skipped = [
        e for e in final["recent"] if "catch-up one runs the latest" in str(e.get("skipped"))
    ]
    assert skipped and (skipped[0]["count"] or 0) >= 3, final["recent"]
    after = sorted(s for s in ran["node1"] if s >= joined_at)
    assert after and all(s in ran["node3"] for s in after), (after, ran["node3"])


async def test_forbid_skips_slots_while_the_previous_fleet_run_has_unfinished_parts(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    name = "slow"
    async with ApiClient(cluster.nats_url) as api:
        # One host at a time, 1.5 s each: a run lasts 4.5 s or more, slots come every 2 s.
        cmd = part_cmd("sleep 1.5")
        args = ["--every", "2s", "--all", "--max-parallel", "1", "--max-failures", "3"]
        made = await asyncio.to_thread(
            schedctl, cluster, "schedule", "create", name, "--cmd", cmd, *args
        )
        assert made.returncode == 0, made.stderr
        await wait_for("3 whole runs", 60, lambda: _whole_runs(cluster, name) >= 3)
        final = await quiesce(cluster, api, name)
    by_slot: dict[int, list[Any]] = collections.defaultdict(list)
    for run in _runs(cluster):
        by_slot[slot_of(run.job)].append(run)
    ordered = sorted(by_slot.items())
    for (slot, runs), (later, next_runs) in itertools.pairwise(ordered):
        ended = max(r.last for r in runs)
        started = min(r.start for r in next_runs)
        assert started > ended, f"slot {later} started while slot {slot}'s run went on"
    forbid = [e for e in final["recent"] if str(e.get("skipped", "")).startswith("forbid")]
    assert forbid, final["recent"]


def _whole_runs(cluster: LocalCluster, name: str) -> int:
    """Slots every host has run and ended."""
    ran = [r for r in _runs(cluster) if r.ended]
    hosts_by_slot: dict[int, set[str]] = collections.defaultdict(set)
    for run in ran:
        hosts_by_slot[slot_of(run.job)].add(run.host)
    return sum(len(hosts) == len(cluster.agents) for hosts in hosts_by_slot.values())
