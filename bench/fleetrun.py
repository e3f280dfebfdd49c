"""A fleet run (`schedctl run --label sim=yes`) over the simulated fleet of bench/fleet.py:
time from acceptance until every host's part started and until the run ended, and the
leader's CPU meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from client import BenchClient
from measure import Meter

from schedagent.core.fleet import parse_definition
from schedagent.core.model import new_job_id
from schedagent.dev.cluster import harness_key

DEADLINE = 300.0
POLL = 0.5


def signed_group(selector: dict[str, Any]) -> dict[str, Any]:
    raw = {"id": f"g-{new_job_id()}", "job": {"cmd": "true"}, "selector": selector, "policy": {}}
    definition = parse_definition(raw).to_dict()
    signature = harness_key()[0].sign_group(definition).to_dict()
    return {"definition": definition, "signature": signature}


async def fleet_run(client: BenchClient, meter: Meter) -> dict[str, Any]:
    """One fleet run over every simulated node; its figures, the CPU measured until it
    ended (before the parts' records are read for their start times)."""
    accepted = time.time()
    reply = await client.call("fleet_create", group=signed_group({"labels": {"sim": "yes"}}))
    group_id, targets = reply["group"]["id"], len(reply["group"]["targets"])
    while True:
        shown = await client.call("fleet_get", id=group_id)
        if shown["group"]["done"] or time.time() - accepted > DEADLINE:
            break
        await asyncio.sleep(POLL)
    figures: dict[str, Any] = {"targets": targets, "counts": shown["counts"]}
    figures["cpu_percent"] = meter.percent()
    if not shown["group"]["done"]:
        return {**figures, "note": f"not ended in {DEADLINE:.0f}s"}
    figures["to_done_s"] = time.time() - accepted
    started = [await _started_at(client, row["job"]) for row in shown["hosts"] if row.get("job")]
    known = [at for at in started if at is not None]
    figures["to_all_started_s"] = (max(known) - accepted) if len(known) == targets else None
    return figures


async def _started_at(client: BenchClient, job_id: str) -> float | None:
    job = await client.get(job_id)
    attempts = job.get("attempts") or []
    return attempts[0].get("started_at") if attempts else None
