"""Idle footprint of every agent of a fresh 3-agent cluster: CPU over a window, RSS, USS, PSS.

`python bench/idle_bench.py [--seconds 45]`: starts a local cluster (real etcd and
nats-server), runs one job so every code path of a working agent has been loaded, lets
it settle, then measures each agent alone for the window. bench/run.py's footprint is
one agent after the throughput run; this one is all three, fresh, minutes apart from
another tree's run (`PYTHONPATH=<tree>/agent`) for before/after figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from client import BenchClient

from schedagent.dev.cluster import LocalCluster


def busy_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def measure(cluster: LocalCluster, seconds: float) -> dict[str, dict[str, float]]:
    procs = {name: psutil.Process(agent.pid) for name, agent in cluster.agents.items()}
    before = {name: busy_seconds(p) for name, p in procs.items()}
    time.sleep(seconds)  # the measurement itself: idle agents, left alone
    figures = {}
    for name, proc in procs.items():
        mem = proc.memory_full_info()
        figures[name] = {
            "cpu_percent": (busy_seconds(proc) - before[name]) / seconds * 100,
            "rss_mb": mem.rss / 2**20,
            "uss_mb": mem.uss / 2**20,
            "pss_mb": mem.pss / 2**20,
        }
    return figures


async def run(seconds: float, settle: float) -> dict[str, dict[str, float]]:
    async with LocalCluster(3, agent_overrides={"log_level": "warning"}) as cluster:
        async with BenchClient(cluster.nats_url) as client:
            await client.wait_final([await client.submit("true")])
        await asyncio.sleep(settle)  # start-up work (registration, first reconcile) done
        return await asyncio.to_thread(measure, cluster, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="the idle window")
    parser.add_argument("--settle", type=float, default=10.0, help="wait before measuring")
    args = parser.parse_args()
    figures = asyncio.run(run(args.seconds, args.settle))
    for name, row in figures.items():
        cells = "  ".join(f"{k} {v:6.2f}" for k, v in row.items())
        print(f"{name}: {cells}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
