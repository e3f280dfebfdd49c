"""Fleet runs when hosts and the leader go away: unreachable hosts, a retry once back,
and a leader SIGKILLed mid roll-out (nothing twice, the budget still holds).

Evidence of what ran is each part's own marks in its agent's directory.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from apiclient import ApiClient
from fleethelp import fail_on, group_id_of, part_cmd, results, schedctl, starts
from helpers import wait_until
from schedagent.dev.cluster import LocalCluster

TTL = 3
FAST = {"node_ttl": TTL, "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0}}


async def test_a_stopped_host_is_unreachable_and_a_retry_runs_it_once_back(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        leader = await api.leader_node()
        away = next(name for name in cluster.agents if name != leader)
        cluster.agents[away].stop()
        await wait_until_gone(api, away, TTL + 10)
        done = await asyncio.to_thread(
            schedctl, cluster, "run", "--all", "--cmd", part_cmd(), "--wait"
        )
        assert done.returncode == 7, (done.stdout, done.stderr)
        assert done.stdout.splitlines()[-1] == "2 succeeded, 1 unreachable"
        group_id = group_id_of(done)
        assert results(cluster, group_id)[away] == "unreachable"
        assert starts(cluster)[away] == []
        cluster.agents[away].start()
        cluster.wait_for_nodes(list(cluster.agents), timeout=20)
        args = ["run", "--retry", group_id, "--only", "unreachable", "--wait", "--json"]
        again = await asyncio.to_thread(schedctl, cluster, *args)
        assert again.returncode == 0, (again.stdout, again.stderr)
        final = json.loads(again.stdout)
        assert [row["host"] for row in final["hosts"]] == [away]
        assert final["counts"] == {"succeeded": 1}
        ran = starts(cluster)
        assert {h: len(r) for h, r in ran.items()} == {h: 1 for h in cluster.agents}


async def test_leader_killed_mid_roll_out_continues_nothing_twice_budget_holds(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(4, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        leader = await api.leader_node()
        first, second, third = sorted(name for name in cluster.agents if name != leader)
        fail_on(cluster, second)
        nodes = ",".join([first, second, third])
        args = ["run", "--nodes", nodes, "--max-parallel", "1", "--cmd", part_cmd("sleep 3")]
        made = await asyncio.to_thread(schedctl, cluster, *args)
        assert made.returncode == 0, made.stderr
        group_id = made.stdout.strip()
        # Killed while the first host's part runs: the new leader must go on from there.
        await wait_until(lambda: bool(starts(cluster)[first]), 20, f"{first} started")
        cluster.agents[leader].kill()
        await api.leader_node(deadline=TTL + 10, not_=leader)
        await wait_until_ended(cluster, group_id, 60)
        assert results(cluster, group_id) == {
            first: "succeeded",
            second: "failed",
            third: "skipped",
        }
        ran = starts(cluster)
        assert len(ran[first]) == 1 and len(ran[second]) == 1, ran
        assert ran[third] == [] and ran[leader] == [], ran
        assert ran[second][0].start > ran[first][0].last, "two hosts at once"


async def wait_until_gone(api: ApiClient, node: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while node in {n["name"] for n in (await api.call("nodes"))["nodes"]}:
        assert time.monotonic() < end, f"{node} still registered after {deadline}s"
        await asyncio.sleep(0.2)


async def wait_until_ended(cluster: LocalCluster, group_id: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while True:
        done = await asyncio.to_thread(schedctl, cluster, "status", group_id, "--json")
        if done.returncode == 0 and json.loads(done.stdout)["group"]["done"]:
            return
        assert time.monotonic() < end, f"{group_id} not ended after {deadline}s"
        await asyncio.sleep(0.5)
