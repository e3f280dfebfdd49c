"""Chaos: 1,000 jobs while agents (the leader too) are SIGKILLed and NATS restarts.

The driver's seed is printed; replay a failure with CHAOS_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from typing import Any

from apiclient import ApiClient
from schedagent.core.model import Job
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.invariants import check_jobs, check_placements, summarize

JOBS = 1000
TTL = 3
OVERRIDES = {
    "node_ttl": TTL,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 0.5},
}
COMMANDS = ["true", "echo hi", "sleep 0.1", "sleep 0.3", "exit 1"]


async def submit_all(api: ApiClient, rng: random.Random, accepted: list[str]) -> None:
    for i in range(JOBS):
        cmd = rng.choice(COMMANDS)
        spec = {"cmd": cmd, "retries": 3, "idempotency_key": f"chaos-{i}"}
        while True:
            reply = await api.raw("submit", _body(api.signed(spec)))
            if reply.get("ok"):
                accepted.append(reply["job"]["id"])
                break
            await asyncio.sleep(0.2)  # e.g. etcd busy: resend, same key
        await asyncio.sleep(rng.uniform(0, 0.02))


def _body(spec: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "spec": spec}).encode()


async def kill_agents(
    cluster: LocalCluster, api: ApiClient, rng: random.Random, stop: asyncio.Event, log: list[str]
) -> None:
    """Every few seconds SIGKILL an agent (every other time the leader), then restart it."""
    nats_restarted = False
    started = time.monotonic()
    kills = 0
    while not stop.is_set():
        await _sleep_or_stop(stop, rng.uniform(2.0, 4.0))
        if stop.is_set():
            return
        leader = (await api.call("leader"))["leader"]
        if kills % 2 == 1 and leader is not None:
            name, role = leader["node"], "leader "
        else:
            name, role = rng.choice(sorted(cluster.agents)), ""
        agent = cluster.agents[name]
        await asyncio.to_thread(agent.kill)
        kills += 1
        log.append(f"{time.monotonic() - started:6.1f}s SIGKILL {role}{name}")
        await _sleep_or_stop(stop, rng.uniform(0.3, 1.5))
        await asyncio.to_thread(agent.start)
        log.append(f"{time.monotonic() - started:6.1f}s restart {name}")
        if not nats_restarted and time.monotonic() - started > 8:
            await asyncio.to_thread(cluster.nats.kill)
            await asyncio.to_thread(cluster.nats.start)
            log.append(f"{time.monotonic() - started:6.1f}s restarted nats-server")
            nats_restarted = True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def test_chaos_every_job_accounted_for(cluster_factory: Any) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 32)))
    print(f"chaos seed: {seed} (replay with CHAOS_SEED={seed})")
    rng = random.Random(seed)
    cluster: LocalCluster = cluster_factory(3, agent_overrides=OVERRIDES)
    accepted: list[str] = []
    events: list[str] = []
    stop = asyncio.Event()
    started = time.monotonic()
    async with ApiClient(cluster.nats_url) as api:
        killer = asyncio.create_task(
            kill_agents(cluster, api, random.Random(rng.random()), stop, events)
        )
        try:
            await submit_all(api, rng, accepted)
        finally:
            stop.set()
            await killer
        print("\n".join(events))
        for agent in cluster.agents.values():
            assert agent.running, f"{agent.name} is not running after the chaos"
        await api.wait_all(accepted, deadline=180)
        jobs = await api.list_all()
        records = {j["id"]: Job.from_dict(j) for j in jobs}
    print(f"chaos: {summarize(records)} in {time.monotonic() - started:.0f}s")
    assert len(set(accepted)) == JOBS
    assert check_jobs(accepted, records) == []
    prefix = f"{cluster.etcd_prefix}/placed/"
    placed = [k[len(prefix) :].split("/") for k in cluster.live_etcd().keys(prefix)]
    assert check_placements(records, [(node, job_id) for node, job_id in placed]) == []
    assert sum(1 for e in events if "SIGKILL" in e) >= 3, events
    assert any("SIGKILL leader" in e for e in events), events
