"""The history figure: failover, a new job's start and an agent's restart with N finished
records of 4 KiB binary output in etcd (a week of history, loaded straight into etcd)."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from typing import Any

from client import BenchClient

from schedagent.dev.cluster import LocalCluster, harness_key
from schedagent.dev.history import load_finished
from schedagent.etcd.store import Store

# 100,000 records of ~16 KB (binary output is kept JSON-escaped) are ~1.6 GB: past
# etcd's default 2 GiB backend quota once bbolt's pages are counted.
QUOTA_BYTES = 8 << 30
SPAN = 6 * 86400.0  # submitted over six days: all inside the default 7-day retention
START_JOBS = 20


async def history_figures(records: int) -> dict[str, Any]:
    """Load `records` finished records under done/, then measure on that cluster."""
    cluster = LocalCluster(3, agent_overrides={"log_level": "warning"})
    cluster.etcd.argv += ["--quota-backend-bytes", str(QUOTA_BYTES)]
    await cluster.astart()
    try:
        figures: dict[str, Any] = {"records": records}
        figures.update(await _load(cluster, records))
        async with BenchClient(cluster.nats_url) as client:
            figures["start_p50_ms"] = await _start_latency(client, START_JOBS)
            figures.update(await _failover(cluster, client))
            figures["agent_restart_to_job_s"] = await _agent_restart(cluster, client)
            figures["list_50_ms"] = await _list_time(client)
        return figures
    finally:
        await cluster.astop()


async def _load(cluster: LocalCluster, records: int) -> dict[str, float]:
    store = Store([cluster.etcd_endpoint], timeout=60)
    await store.connect()
    try:
        started = time.monotonic()
        written = await load_finished(
            store, f"{cluster.etcd_prefix}/done/", records, nodes=list(cluster.agents), span=SPAN
        )
        return {"load_s": time.monotonic() - started, "loaded_mb": written / 2**20}
    finally:
        await store.close()


async def _start_latency(client: BenchClient, jobs: int) -> float:
    """Submit → command start of `date`, one job at a time: the median, in ms."""
    waits = []
    for _ in range(jobs):
        submitted = time.time()
        job_id = await client.submit("date +%s.%N")
        await client.wait_one_final(job_id)
        started = float((await client.get(job_id))["output_tail"].strip())
        waits.append((started - submitted) * 1000)
    return statistics.median(waits)


async def _failover(cluster: LocalCluster, client: BenchClient) -> dict[str, float]:
    """SIGKILL the leader, submit a job at once: when it is placed, and finished."""
    leader = (await client.call("leader"))["leader"]["node"]
    cluster.agents[leader].kill()
    killed = time.time()
    job_id = await client.submit("true")
    placed = await client.wait_state(job_id, {"ASSIGNED", "RUNNING", "SUCCEEDED"}, 60)
    finished = await client.wait_state(job_id, {"SUCCEEDED", "FAILED"}, 60)
    await asyncio.to_thread(cluster.agents[leader].start)
    await asyncio.to_thread(cluster.wait_for_nodes, [leader])
    return {"failover_to_placement_s": placed - killed, "failover_to_finish_s": finished - killed}


async def _agent_restart(cluster: LocalCluster, client: BenchClient) -> float:
    """SIGKILL a follower and start it again: until a job pinned to it has finished."""
    leader = (await client.call("leader"))["leader"]["node"]
    name = next(n for n in cluster.agents if n != leader)
    cluster.agents[name].kill()
    started = time.time()
    await asyncio.to_thread(cluster.agents[name].start)
    await asyncio.to_thread(cluster.wait_for_nodes, [name])
    job_id = await _submit_to(client, name, "true")
    return await client.wait_state(job_id, {"SUCCEEDED"}, 60) - started


async def _submit_to(client: BenchClient, node: str, cmd: str) -> str:
    spec: dict[str, Any] = {"cmd": cmd, "node": node, "idempotency_key": str(uuid.uuid4())}
    spec["signature"] = harness_key()[0].sign(spec).to_dict()  # as BenchClient.submit
    return str((await client.call("submit", spec=spec))["job"]["id"])


async def _list_time(client: BenchClient) -> float:
    """One `list` of the 50 newest jobs (what `schedctl list` asks), in ms."""
    started = time.monotonic()
    await client.call("list", limit=50)
    return (time.monotonic() - started) * 1000


# Beside run.py's TARGETS: the same failover and start targets, with the history loaded.
HISTORY_TARGETS = {
    "history_failover_to_placement_s": ("<=", 3.0),
    "history_start_p50_ms": ("<=", 3.0),
}


def history_flat(history: dict[str, Any] | None) -> dict[str, float]:
    """The figures of history_figures() as run.py's summary lists them."""
    if not history:
        return {}
    return {
        "history_records": history["records"],
        "history_load_s": history["load_s"],
        "history_failover_to_placement_s": history["failover_to_placement_s"],
        "history_failover_to_finish_s": history["failover_to_finish_s"],
        "history_start_p50_ms": history["start_p50_ms"],
        "history_agent_restart_to_job_s": history["agent_restart_to_job_s"],
        "history_list_50_ms": history["list_50_ms"],
    }


def main() -> None:
    """Just this figure: `python bench/history_bench.py [records]` prints its JSON."""
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    print(json.dumps(asyncio.run(history_figures(records)), indent=2))


if __name__ == "__main__":
    main()
