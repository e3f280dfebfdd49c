"""Scaling: CPU per job and jobs/s with 500, 5,000 and 50,000 `true` jobs queued at once.

Each size is submitted through `submit_many` (1,000 specs a request) as fast as the
agents take it, to a fresh 3-agent cluster (the sizes run one after another on it),
and timed from the first submit to the last job seen final. A size whose run would
not fit in what is left of the time budget (judged from the rate of the size before)
is skipped and the reason recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from client import BenchClient
from measure import cpu_by_kind

from schedagent.dev.cluster import LocalCluster

DEFAULT_SIZES = (500, 5000, 50000)
DEFAULT_BUDGET = 110.0  # seconds for all sizes together, so `make bench` stays under 10 min
POLL = 0.5


async def wait_all_final(client: BenchClient, ids: list[str], deadline: float) -> int:
    """Wait until every job was seen final or the monotonic deadline: how many were."""
    wanted = set(ids)
    while True:
        done = len(wanted & client.final_at.keys())
        if done == len(wanted) or time.monotonic() > deadline:
            return done
        await asyncio.sleep(POLL)


async def one_size(
    cluster: LocalCluster, client: BenchClient, jobs: int, deadline: float
) -> dict[str, Any]:
    leader = (await client.call("leader"))["leader"]["node"]
    before, started = cpu_by_kind(cluster, leader), time.time()
    ids = await client.submit_batches(["true"] * jobs)
    submitted = time.time()
    done = await wait_all_final(client, ids, deadline)
    cpu = {k: v - before[k] for k, v in cpu_by_kind(cluster, leader).items()}
    last = max((client.final_at[i] for i in ids if i in client.final_at), default=time.time())
    figures: dict[str, Any] = {
        "jobs": jobs,
        "finished": done,
        "submit_s": submitted - started,
        "seconds": last - started,
        "jobs_per_s": done / (last - started),
        "cpu_ms_per_job": sum(cpu.values()) * 1000 / max(done, 1),
        "cpu_ms_per_job_by_process": {k: v * 1000 / max(done, 1) for k, v in cpu.items()},
    }
    if done < jobs:
        figures["note"] = f"only {done} of {jobs} final when the time budget ran out"
    return figures


def too_long(size: int, rate: float | None, left: float) -> str | None:
    """Why this size is skipped, or None to run it."""
    if left <= 0:
        return "no time left in the scaling budget"
    if rate is None:
        return None
    estimate = size / rate
    if estimate > left:
        return (
            f"at the previous size's {rate:.0f} jobs/s it would take ~{estimate:.0f} s, "
            f"more than the {left:.0f} s left of the scaling budget (--scaling-budget)"
        )
    return None


async def scaling_figures(sizes: Sequence[int], budget: float) -> dict[str, Any]:
    cluster = LocalCluster(3, agent_overrides={"log_level": "warning"})
    await cluster.astart()
    end = time.monotonic() + budget
    figures: dict[str, Any] = {"budget_s": budget, "sizes": {}, "skipped": {}}
    try:
        async with BenchClient(cluster.nats_url) as client:
            await client.wait_final([await client.submit("true")])  # warm up
            rate = None
            for size in sizes:
                why = too_long(size, rate, end - time.monotonic())
                if why is not None:
                    figures["skipped"][str(size)] = why
                    print(f"scaling: skipped {size} jobs: {why}", flush=True)
                    continue
                result = await one_size(cluster, client, size, end)
                figures["sizes"][str(size)] = result
                rate = result["jobs_per_s"]
        return figures
    finally:
        await cluster.astop()


def flat(figures: dict[str, Any]) -> dict[str, float]:
    """The summary table's rows: per size, and the growth from the smallest to the largest."""
    rows: dict[str, float] = {}
    sizes = figures["sizes"]
    for size, result in sizes.items():
        rows[f"scaling_{size}_jobs_per_s"] = result["jobs_per_s"]
        rows[f"scaling_{size}_cpu_ms_per_job"] = result["cpu_ms_per_job"]
    if len(sizes) > 1:
        ran = sorted(sizes, key=int)
        rows["scaling_cpu_growth"] = (
            sizes[ran[-1]]["cpu_ms_per_job"] / sizes[ran[0]]["cpu_ms_per_job"]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES))
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET)
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    print(json.dumps(asyncio.run(scaling_figures(sizes, args.budget)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
