"""`make bench`: throughput, latency, CPU per job, failover, footprint and placement, in one run."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from client import BenchClient
from history_bench import HISTORY_TARGETS, history_figures, history_flat
from placement_bench import placement_figures
from scheduler_bench import scheduler_figures

from schedagent.dev.cluster import LocalCluster

RESULTS = Path(__file__).parent / "results"
TARGETS = {
    "throughput_jobs_per_s": (">=", 900),
    "throughput_vs_baseline": (">=", 0.35),
    "cpu_ms_per_job": ("<=", 2.0),
    "latency_start_p50_ms": ("<=", 3.0),
    "latency_start_p99_ms": ("<=", 15.0),
    "failover_to_placement_s": ("<=", 3.0),
    "idle_rss_mb": ("<=", 45.0),
    "idle_cpu_percent": ("<=", 0.5),
    "placement_per_s_5000_nodes": (">=", 5000),
    **HISTORY_TARGETS,
}


def spawn_baseline(seconds: float = 3.0) -> float:
    """/bin/sh -c true spawned and reaped from Python, two at a time: processes per second."""
    done = 0
    end = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < end:
        procs = [subprocess.Popen(["/bin/sh", "-c", "true"]) for _ in range(2)]
        for proc in procs:
            proc.wait()
        done += 2
    return done / (time.monotonic() - start)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


async def throughput(cluster: LocalCluster, client: BenchClient, jobs: int) -> dict[str, float]:
    procs = [psutil.Process(p.pid) for p in cluster.processes() if p.pid]
    cpu_before, own_before = cpu_seconds(procs), own_cpu()
    started = time.time()
    ids = await client.submit_many(["true"] * jobs, in_flight=64)
    last = await client.wait_final(ids)
    elapsed = last - started
    cpu = cpu_seconds(procs) - cpu_before + own_cpu() - own_before
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_s": jobs / elapsed,
        "cpu_ms_per_job": cpu * 1000 / jobs,
    }


async def latency(client: BenchClient, jobs: int) -> dict[str, float]:
    to_start, to_final = [], []
    for _ in range(jobs):
        submitted = time.time()
        job_id = await client.submit("date +%s.%N")
        final_seen = await client.wait_one_final(job_id)
        record = await client.get(job_id)
        command_start = float(record["output_tail"].strip())
        to_start.append((command_start - submitted) * 1000)
        to_final.append((final_seen - submitted) * 1000)
    return {
        "start_p50_ms": percentile(to_start, 50),
        "start_p99_ms": percentile(to_start, 99),
        "final_p50_ms": percentile(to_final, 50),
        "final_p99_ms": percentile(to_final, 99),
    }


async def failover(cluster: LocalCluster, client: BenchClient) -> dict[str, float]:
    leader = (await client.call("leader"))["leader"]["node"]
    cluster.agents[leader].kill()
    killed = time.time()
    job_id = await client.submit("true")
    placed = await client.wait_state(job_id, {"ASSIGNED", "RUNNING", "SUCCEEDED"})
    finished = await client.wait_one_final(job_id)
    cluster.agents[leader].start()
    return {"to_placement_s": placed - killed, "to_finish_s": finished - killed}


def footprint(cluster: LocalCluster, idle_seconds: float) -> dict[str, float]:
    agent = psutil.Process(next(iter(cluster.agents.values())).pid)
    before = agent.cpu_times()
    time.sleep(idle_seconds)  # the measurement itself: an idle agent, left alone
    after = agent.cpu_times()
    mem = agent.memory_full_info()
    busy = (after.user + after.system) - (before.user + before.system)
    return {
        "rss_mb": mem.rss / 2**20,
        "pss_mb": mem.pss / 2**20,
        "cpu_percent": busy / idle_seconds * 100,
        "idle_seconds": idle_seconds,
    }


async def cluster_figures(args: argparse.Namespace) -> dict[str, Any]:
    # A temporary base dir: the cluster removes it when it stops cleanly.
    cluster = LocalCluster(3, agent_overrides={"log_level": "warning"})
    await cluster.astart()
    try:
        async with BenchClient(cluster.nats_url) as client:
            await client.wait_final([await client.submit("true")])  # warm up
            figures: dict[str, Any] = {"throughput": await throughput(cluster, client, args.jobs)}
            figures["latency"] = await latency(client, args.latency_jobs)
            figures["footprint"] = await asyncio.to_thread(footprint, cluster, args.idle)
            figures["failover"] = await failover(cluster, client)
        return figures
    finally:
        await cluster.astop()


def flatten(results: dict[str, Any]) -> dict[str, float]:
    t, lat, foot = results["throughput"], results["latency"], results["footprint"]
    return {
        "throughput_jobs_per_s": t["jobs_per_s"],
        "throughput_vs_baseline": t["jobs_per_s"] / results["baseline_spawns_per_s"],
        "cpu_ms_per_job": t["cpu_ms_per_job"],
        "latency_start_p50_ms": lat["start_p50_ms"],
        "latency_start_p99_ms": lat["start_p99_ms"],
        "latency_final_p50_ms": lat["final_p50_ms"],
        "latency_final_p99_ms": lat["final_p99_ms"],
        "failover_to_placement_s": results["failover"]["to_placement_s"],
        "failover_to_finish_s": results["failover"]["to_finish_s"],
        "idle_rss_mb": foot["rss_mb"],
        "idle_pss_mb": foot["pss_mb"],
        "idle_cpu_percent": foot["cpu_percent"],
        "placement_per_s_500_nodes": results["placement"]["500"],
        "placement_per_s_5000_nodes": results["placement"]["5000"],
        "placement_per_s_50000_nodes": results["placement"]["50000"],
        **{
            f"sched_{kind}_ms_{queued}q": results["scheduler"][f"{queued}q_1000n"][f"{kind}_ms"]
            for kind in ("node_refresh", "completion", "submit")
            for queued in (500, 50000)
        },
        **history_flat(results.get("history")),
    }


def summary(flat: dict[str, float], baseline: float) -> str:
    lines = [
        f"{'figure':<30} {'value':>12}  target",
        f"{'spawn baseline (procs/s)':<30} {baseline:>12.1f}",
    ]
    for name, value in flat.items():
        target = TARGETS.get(name)
        mark = ""
        if target is not None:
            op, bound = target
            ok = value >= bound if op == ">=" else value <= bound
            mark = f"{op} {bound:g}  {'met' if ok else 'NOT met'}"
        lines.append(f"{name:<30} {value:>12.2f}  {mark}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds for the footprint")
    parser.add_argument(
        "--history-records",
        type=int,
        default=100000,
        help="finished records (4 KiB binary output each) for the history figure; 0 skips it",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    results: dict[str, Any] = {
        "date": stamp,
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "baseline_spawns_per_s": spawn_baseline(),
    }
    results.update(asyncio.run(cluster_figures(args)))
    results["placement"] = placement_figures()
    results["scheduler"] = scheduler_figures()
    if args.history_records > 0:
        results["history"] = asyncio.run(history_figures(args.history_records))
    results["figures"] = flatten(results)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    print(summary(results["figures"], results["baseline_spawns_per_s"]))
    print(f"written: bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
