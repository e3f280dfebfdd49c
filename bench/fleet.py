"""Fleet simulation: a real leader (and a real standby) on real etcd and NATS in front of
a thousand simulated nodes (bench/simagent.py), to plan past what one machine runs.

Measures the leader's CPU when idle as the fleet grows, one fleet run over every
simulated node (bench/fleetrun.py), then under an offered load of
`true` jobs (only simulated nodes take them), placement latency (submit -> ASSIGNED,
from the records), and the time to the next placement after the leader is SIGKILLed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from client import BenchClient
from fleetrun import fleet_run
from measure import Meter, percentile

from schedagent.dev.cluster import LocalCluster, harness_key
from schedagent.dev.procs import ManagedProcess, wait_for

SIMAGENT = Path(__file__).with_name("simagent.py")
SETTLE = 2.0  # after a process of nodes is ready: their first refreshes land
FAILOVER_DEADLINE = 60.0
MAX_IN_FLIGHT = 8


class SimProcess(ManagedProcess):
    """One bench/simagent.py process hosting `count` simulated nodes."""

    def __init__(self, cluster: LocalCluster, first: int, count: int) -> None:
        self.count = count
        argv = [sys.executable, str(SIMAGENT), "--etcd", cluster.etcd_endpoint]
        argv += ["--nats", cluster.nats_url, "--first", str(first), "--count", str(count)]
        name = f"sim{first // max(count, 1)}"
        super().__init__(name, argv, cluster.base_dir / f"{name}.log")

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.name} exited: {self.log_tail(20)}")
            return "ready" in self.log_tail(5)

        wait_for(ready, timeout, f"{self.name}'s {self.count} nodes to register", 0.2)

    def summary(self) -> dict[str, Any]:
        self.stop(30)
        lines = [line for line in self.log_tail(5).splitlines() if line.startswith("{")]
        return dict(json.loads(lines[-1])) if lines else {}


def sim_spec(cmd: str = "true") -> dict[str, Any]:
    spec: dict[str, Any] = {"cmd": cmd, "labels": {"sim": "yes"}}
    spec["idempotency_key"] = str(uuid.uuid4())
    spec["signature"] = harness_key()[0].sign(spec).to_dict()
    return spec


async def leader_of(client: BenchClient) -> str:
    return str((await client.call("leader"))["leader"]["node"])


async def grow(
    cluster: LocalCluster, client: BenchClient, args: argparse.Namespace
) -> tuple[list[SimProcess], list[dict[str, Any]]]:
    """Start the simulated nodes a process at a time; the leader's idle CPU after each."""
    per = args.nodes // args.processes
    sims: list[SimProcess] = []
    curve = []
    for index in range(args.processes):
        sim = SimProcess(cluster, index * per, per)
        sim.start()
        sims.append(sim)
        await asyncio.to_thread(sim.wait_ready, 120)
        await asyncio.sleep(SETTLE)
        leader = await leader_of(client)
        meter = Meter(_pids(cluster, leader))
        await asyncio.sleep(args.idle)  # the measurement: the fleet registered, no jobs
        curve.append({"nodes": per * (index + 1), "cpu_percent": meter.percent()})
    return sims, curve


def _pids(cluster: LocalCluster, leader: str) -> dict[str, int]:
    pids = {"leader": cluster.agents[leader].pid, "etcd": cluster.etcd.pid}
    pids["nats-server"] = cluster.nats.pid
    return {k: int(v) for k, v in pids.items() if v}


async def offer(client: BenchClient, rate: float, seconds: float) -> tuple[list[str], float]:
    """Submit `rate` jobs/s for `seconds`, a batch every tenth of a second without waiting
    for the one before (up to MAX_IN_FLIGHT): the ids, and the rate the agents took."""
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def send(batch: list[dict[str, Any]]) -> list[str]:
        async with limit:
            reply = await client.call("submit_many", specs=batch)
        return [job["id"] for job in reply["jobs"] if "id" in job]

    sending: list[asyncio.Task[list[str]]] = []
    started = time.monotonic()
    tick = 0
    while time.monotonic() - started < seconds:
        tick += 1
        sending.append(asyncio.create_task(send([sim_spec() for _ in range(int(rate / 10))])))
        await asyncio.sleep(max(0.0, started + tick / 10 - time.monotonic()))
    ids = [job for batch in await asyncio.gather(*sending) for job in batch]
    return ids, len(ids) / (time.monotonic() - started)


async def records(client: BenchClient, wanted: set[str]) -> list[dict[str, Any]]:
    """The records of these jobs, through `list` (newest first, paged)."""
    found: list[dict[str, Any]] = []
    before = None
    while True:
        reply = await client.call("list", limit=10000, before=before)
        found += [job for job in reply["jobs"] if job["id"] in wanted]
        before = reply["next"]
        if before is None:
            return found


async def load(cluster: LocalCluster, client: BenchClient, args: argparse.Namespace) -> Any:
    leader = await leader_of(client)
    meter = Meter(_pids(cluster, leader))
    started = time.time()
    ids, offered = await offer(client, args.rate, args.load_seconds)
    submit_cpu = meter.percent()
    last = await client.wait_final(ids)
    during = meter.percent()
    jobs = await records(client, set(ids))
    placed = [j["attempts"][0]["assigned_at"] - j["submitted_at"] for j in jobs if j["attempts"]]
    last_assigned = max(j["attempts"][0]["assigned_at"] for j in jobs if j["attempts"])
    return {
        "jobs": len(ids),
        "offered_jobs_per_s": offered,
        "placed_jobs_per_s": len(placed) / (last_assigned - started),
        "finished_jobs_per_s": len(ids) / (last - started),
        "succeeded": sum(1 for j in jobs if j["state"] == "SUCCEEDED"),
        "placement_p50_ms": percentile(placed, 50) * 1000,
        "placement_p99_ms": percentile(placed, 99) * 1000,
        "cpu_percent_while_submitting": submit_cpu,
        "cpu_percent_until_all_done": during,
    }


async def failover(cluster: LocalCluster, client: BenchClient) -> dict[str, Any]:
    """SIGKILL the leader; how long until the standby places a job submitted right after."""
    leader = await leader_of(client)
    cluster.agents[leader].kill()
    killed = time.time()
    reply = await client.call("submit", spec=sim_spec())
    placing = {"ASSIGNED", "RUNNING", "SUCCEEDED"}
    try:
        placed = await client.wait_state(reply["job"]["id"], placing, FAILOVER_DEADLINE)
    except TimeoutError:
        return {"to_placement_s": None, "killed": leader, "note": "not placed in time"}
    return {"to_placement_s": placed - killed, "killed": leader}


async def measured_fleet_run(cluster: LocalCluster, client: BenchClient) -> dict[str, Any]:
    """A fleet run over every simulated node (bench/fleetrun.py), the leader's CPU with it."""
    return await fleet_run(client, Meter(_pids(cluster, await leader_of(client))))


async def fleet_figures(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {"log_level": "warning", "cpus": 1}
    cluster = LocalCluster(["real-a", "real-b"], agent_overrides=overrides)
    await cluster.astart()
    sims: list[SimProcess] = []
    try:
        async with BenchClient(cluster.nats_url) as client:
            sims, curve = await grow(cluster, client, args)
            figures: dict[str, Any] = {"nodes": args.nodes, "idle": curve}
            figures["fleet_run"] = await measured_fleet_run(cluster, client)
            if args.fleet_run_only:
                return figures
            # Before the load: the jobs it leaves in etcd are history a new leader reads.
            figures["failover"] = await failover(cluster, client)
            figures["load"] = await load(cluster, client, args)
        figures["sim_processes"] = [sim.summary() for sim in sims]
        return figures
    finally:
        for sim in sims:
            sim.stop(10)
        await cluster.astop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet-nodes", dest="nodes", type=int, default=1000)
    parser.add_argument("--fleet-processes", dest="processes", type=int, default=4)
    parser.add_argument("--fleet-idle", dest="idle", type=float, default=5.0)
    parser.add_argument("--fleet-rate", dest="rate", type=float, default=500.0)
    parser.add_argument("--fleet-load-seconds", dest="load_seconds", type=float, default=12.0)
    parser.add_argument(
        "--fleet-run-only",
        action="store_true",
        help="Measure the idle fleet and one fleet run, not the failover or the load.",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(fleet_figures(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def flat(figures: dict[str, Any]) -> dict[str, float]:
    """The summary table's rows."""
    idle = figures["idle"][-1]
    load, placed = figures["load"], figures["failover"]["to_placement_s"]
    return {
        "fleet_nodes": float(idle["nodes"]),
        "fleet_idle_leader_cpu_pct": idle["cpu_percent"]["leader"],
        "fleet_offered_jobs_per_s": load["offered_jobs_per_s"],
        "fleet_placed_jobs_per_s": load["placed_jobs_per_s"],
        "fleet_load_leader_cpu_pct": load["cpu_percent_until_all_done"]["leader"],
        "fleet_placement_p50_ms": load["placement_p50_ms"],
        "fleet_placement_p99_ms": load["placement_p99_ms"],
        "fleet_failover_to_placement_s": float("nan") if placed is None else placed,
        "fleet_run_to_all_started_s": _number(figures["fleet_run"].get("to_all_started_s")),
        "fleet_run_leader_cpu_pct": figures["fleet_run"]["cpu_percent"]["leader"],
    }


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
