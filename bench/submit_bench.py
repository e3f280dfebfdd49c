"""What submitting costs, apart from running: `submit` one spec a request (64 in flight,
as bench/run.py submits) against `submit_many` (1,000 a request), on one 3-agent cluster.

`python bench/submit_bench.py`: jobs no node can take (a label none has) so nothing
runs; CPU of every process (etcd, NATS, agents, this client: signing included) per
submitted job and submits per second, both ways in alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from client import BenchClient
from measure import cpu_by_kind

from schedagent.dev.cluster import LocalCluster

NOWHERE = {"labels": {"bench": "placed-nowhere"}}


async def submit_singly(client: BenchClient, count: int) -> None:
    limit = asyncio.Semaphore(64)

    async def one() -> None:
        async with limit:
            await client.call("submit", spec=client.spec("true", **NOWHERE))

    await asyncio.gather(*(one() for _ in range(count)))


async def submit_batched(client: BenchClient, count: int) -> None:
    for start in range(0, count, 1000):
        specs = [client.spec("true", **NOWHERE) for _ in range(min(1000, count - start))]
        await client.call("submit_many", specs=specs)


async def measure(cluster: LocalCluster, client: BenchClient, way: str, count: int) -> Any:
    submit = submit_singly if way == "submit" else submit_batched
    before, started = cpu_by_kind(cluster, None), time.monotonic()
    await submit(client, count)
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # the leader's watch catches up with the last creates
    cpu = {k: v - before[k] for k, v in cpu_by_kind(cluster, None).items()}
    return {
        "submits_per_s": count / elapsed,
        "cpu_ms_per_job": sum(cpu.values()) * 1000 / count,
        "by_process_ms": {k: round(v * 1000 / count, 3) for k, v in cpu.items()},
    }


async def compare(count: int, rounds: int) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = {"submit": [], "submit_many": []}
    cluster = LocalCluster(3, agent_overrides={"log_level": "warning"})
    async with cluster, BenchClient(cluster.nats_url) as client:
        for _ in range(rounds):
            for way in runs:
                runs[way].append(await measure(cluster, client, way, count))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(compare(args.jobs, args.rounds)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
