"""Chaos: 1,000 jobs while agents (the leader too) are SIGKILLed and NATS restarts.

Judged from outside the records as well: every job marks its own runs in a file, a
sampler looks at the process table while it runs, and some jobs are canceled. The
driver's seed is printed; replay a failure with CHAOS_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apiclient import ApiClient
from schedagent.core.model import Job
from schedagent.core.transitions import HANDED_BACK
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.invariants import (
    INTERRUPTED,
    Snapshot,
    check_cancels,
    check_executions,
    check_jobs,
    check_placements,
    check_running_have_processes,
    summarize,
)
from schedagent.host.jobprocs import job_attempts

LEASE_LOSSES = frozenset({"agent lost its etcd lease", "agent cut off from etcd"})
JOBS = 1000
TTL = 3
OVERRIDES = {
    "node_ttl": TTL,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 0.5},
}
# Each command with the end it alone explains: its state and reason.
COMMANDS = {
    "true": ("SUCCEEDED", "exit code 0"),
    "echo hi": ("SUCCEEDED", "exit code 0"),
    "sleep 0.1": ("SUCCEEDED", "exit code 0"),
    "sleep 0.3": ("SUCCEEDED", "exit code 0"),
    "exit 1": ("FAILED", "exit code 1"),
}
CANCELED_CMD = "sleep 5"  # one job in CANCEL_EVERY, canceled while it runs or waits
CANCEL_EVERY = 25
# A RUNNING record may outlive its process by a lease TTL (the agent was killed and
# the job ended on its own) and a pass of the leader: longer is a phantom.
PHANTOM_GRACE = TTL + 5.0
# A canceled job's process is killed at once, or when its killed agent is back (a
# restart, the reap before it registers, a reconciler pass): longer is a breach.
CANCEL_GRACE = TTL + 10.0
KILL_SLACK = 1.0


class Run:
    """What the driver did and saw: accepted jobs, their commands, kills, cancels."""

    def __init__(self, marks_path: Path) -> None:
        self.marks_path = marks_path
        self.accepted: list[str] = []
        self.commands: dict[str, str] = {}
        self.kills: dict[str, list[float]] = {}
        self.cancels: dict[str, float] = {}  # job -> when its cancel was acknowledged
        self.snapshots: list[Snapshot] = []
        self.events: list[str] = []


async def submit_all(api: ApiClient, rng: random.Random, run: Run) -> None:
    cancels: list[asyncio.Task[None]] = []
    for i in range(JOBS):
        cmd = CANCELED_CMD if i % CANCEL_EVERY == 0 else rng.choice(sorted(COMMANDS))
        spec = {
            "cmd": marks.marked(cmd, run.marks_path, beat=cmd == CANCELED_CMD),
            "retries": 3,
            "idempotency_key": f"chaos-{i}",
        }
        while True:
            reply = await api.raw("submit", _body(api.signed(spec)))
            if reply.get("ok"):
                job_id = reply["job"]["id"]
                run.accepted.append(job_id)
                run.commands[job_id] = cmd
                break
            await asyncio.sleep(0.2)  # e.g. etcd busy: resend, same key
        if cmd == CANCELED_CMD:
            cancels.append(
                asyncio.create_task(cancel_later(api, job_id, rng.uniform(0.5, 2.0), run))
            )
        await asyncio.sleep(rng.uniform(0, 0.02))
    await asyncio.gather(*cancels)


async def cancel_later(api: ApiClient, job_id: str, delay: float, run: Run) -> None:
    await asyncio.sleep(delay)
    body = {"v": 1, "id": job_id, "signature": api.key.sign_cancel(job_id).to_dict()}
    while not (await api.raw("cancel", json.dumps(body).encode())).get("ok"):
        await asyncio.sleep(0.2)
    run.cancels[job_id] = time.time()


def _body(spec: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "spec": spec}).encode()


async def kill_agents(
    cluster: LocalCluster, api: ApiClient, rng: random.Random, stop: asyncio.Event, run: Run
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
        # Taken once it is dead: an attempt its last moments started began before this.
        run.kills.setdefault(name, []).append(time.time())
        kills += 1
        run.events.append(f"{time.monotonic() - started:6.1f}s SIGKILL {role}{name}")
        await _sleep_or_stop(stop, rng.uniform(0.3, 1.5))
        await asyncio.to_thread(agent.start)
        run.events.append(f"{time.monotonic() - started:6.1f}s restart {name}")
        if not nats_restarted and time.monotonic() - started > 8:
            await asyncio.to_thread(cluster.nats.kill)
            await asyncio.to_thread(cluster.nats.start)
            run.events.append(f"{time.monotonic() - started:6.1f}s restarted nats-server")
            nats_restarted = True


async def sample(api: ApiClient, stop: asyncio.Event, run: Run) -> None:
    """Now and then: the RUNNING records, then the job processes on this host."""
    while not stop.is_set():
        with contextlib.suppress(AssertionError, TimeoutError, OSError):
            running = await api.list_all("RUNNING")
            processes = await asyncio.to_thread(job_attempts)
            mine = {j["id"]: (j["attempt"], j["updated_at"]) for j in running}
            found = frozenset(key for key in processes if key[0] in mine)
            run.snapshots.append(Snapshot(time.time(), mine, found))
        await _sleep_or_stop(stop, 1.0)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def check_outcomes(run: Run, records: Mapping[str, Job]) -> list[str]:
    """Every job ends as its command alone explains (CANCELED if canceled), except
    one whose retries all went to attempts lost by a kill of their node meanwhile:
    the documented budget of "node lost" retries, each loss explained by a kill."""
    problems = []
    for job_id in run.accepted:
        job = records[job_id]
        for attempt in job.attempts:
            # A lost lease needs no kill: on a starved machine an agent may miss its
            # refreshes and fence itself; the marks still prove nothing ran twice.
            lease_lost = attempt.reason in LEASE_LOSSES
            if attempt.state != HANDED_BACK and attempt.reason in INTERRUPTED and not lease_lost:
                began = attempt.started_at or attempt.assigned_at
                ended = attempt.ended_at or float("inf")
                kills = run.kills.get(attempt.node, [])
                # A kill is noted just before its SIGKILL is sent (from a thread).
                if not any(began <= k + KILL_SLACK and k <= ended for k in kills):
                    problems.append(
                        f"{job_id}: attempt {attempt.n} on {attempt.node} "
                        f"({began:.2f}-{ended:.2f}) ended {attempt.reason!r} with no kill of"
                        f" its node meanwhile (kills at {[round(k, 2) for k in kills]})"
                    )
        expected = (
            ("CANCELED", "canceled") if job_id in run.cancels else COMMANDS[run.commands[job_id]]
        )
        ended = (str(job.state), job.reason)
        if ended != expected and not (job.state == "FAILED" and job.reason in INTERRUPTED):
            problems.append(f"{job_id}: {run.commands[job_id]!r} ended {ended}, not {expected}")
    return problems


async def test_chaos_every_job_accounted_for(cluster_factory: Any, tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 32)))
    print(f"chaos seed: {seed} (replay with CHAOS_SEED={seed})")
    rng = random.Random(seed)
    cluster: LocalCluster = cluster_factory(3, agent_overrides=OVERRIDES)
    run = Run(tmp_path / "marks")
    stop = asyncio.Event()
    started = time.monotonic()
    async with ApiClient(cluster.nats_url) as api:
        killer = asyncio.create_task(
            kill_agents(cluster, api, random.Random(rng.random()), stop, run)
        )
        sampler = asyncio.create_task(sample(api, stop, run))
        try:
            await submit_all(api, rng, run)
        finally:
            stop.set()
            await asyncio.gather(killer, sampler)
        print("\n".join(run.events))
        for agent in cluster.agents.values():
            assert agent.running, f"{agent.name} is not running after the chaos"
        await api.wait_all(run.accepted, deadline=180)
        jobs = await api.list_all()
        records = {j["id"]: Job.from_dict(j) for j in jobs if j["id"] in run.commands}
    runs = marks.read_file(run.marks_path)
    print(f"chaos: {summarize(records)} in {time.monotonic() - started:.0f}s")
    marked = len(marks.by_attempt(runs))
    print(f"chaos: {marked} runs marked, {len(run.cancels)} cancels, {len(run.snapshots)} samples")
    assert len(set(run.accepted)) == JOBS
    assert check_jobs(run.accepted, records) == []
    assert check_executions(runs, records) == []
    assert check_cancels(runs, run.cancels, records, CANCEL_GRACE) == []
    assert check_running_have_processes(run.snapshots, PHANTOM_GRACE) == []
    assert check_outcomes(run, records) == []
    prefix = f"{cluster.etcd_prefix}/placed/"
    placed = [k[len(prefix) :].split("/") for k in cluster.live_etcd().keys(prefix)]
    assert check_placements(records, [(node, job_id) for node, job_id in placed]) == []
    assert sum(len(k) for k in run.kills.values()) >= 3, run.events
    assert any("SIGKILL leader" in e for e in run.events), run.events
