"""Fenced execution: one job never runs on two hosts at once, whatever the network does.

Every job here writes its own marks (start, a beat every 0.2 s, end; job id and
attempt) to a file in its agent's directory, and overlap is judged from those marks,
not from the records. An agent's link to etcd (and NATS) goes through a relay the test
freezes: a black hole, as a partition is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiclient import FINAL, ApiClient
from helpers import wait_until
from relay import Relay
from schedagent.core import fencing
from schedagent.core.model import Job
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.invariants import check_jobs
from sdsockets import DatagramListener, parse_notify

TTL = 5
FAST = {
    "node_ttl": TTL,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 1.0},
}
# The most free CPUs take the jobs: all of them start on node2, the one to be cut off,
# and the others have room for every retry.
CPUS = {"node1": 4.0, "node2": 16.0, "node3": 4.0}
VICTIM = "node2"
JOBS = 6
JOB_SECONDS = 15


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    """Relays the test starts; closed after the cluster (asked for before it) is stopped."""
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()


def mark_files(cluster: LocalCluster) -> dict[str, Path]:
    return {name: agent.dir / marks.FILE for name, agent in cluster.agents.items()}


async def answer(api: ApiClient, verb: str, **body: Any) -> dict[str, Any]:
    """A request retried while the agent that took it answers `unavailable` (the cut-off
    one is still in the API's queue group: it cannot read etcd)."""
    for _ in range(50):
        reply = await api.raw(verb, json.dumps({"v": 1, **body}).encode())
        if reply.get("ok"):
            return reply
        assert reply.get("code") == "unavailable", reply
        await asyncio.sleep(0.1)
    raise AssertionError(f"{verb}: only `unavailable` answers")


async def records(api: ApiClient, ids: list[str]) -> dict[str, Job]:
    return {i: Job.from_dict((await answer(api, "get", id=i))["job"]) for i in ids}


async def wait_records(
    api: ApiClient, ids: list[str], ok: Any, deadline: float, what: str
) -> dict[str, Job]:
    end = time.monotonic() + deadline
    while True:
        jobs = await records(api, ids)
        if all(ok(job) for job in jobs.values()):
            return jobs
        if time.monotonic() > end:
            states = {i: (str(j.state), j.attempt, j.node) for i, j in jobs.items()}
            raise AssertionError(f"timed out after {deadline}s waiting for {what}: {states}")
        await asyncio.sleep(0.2)


async def start_long_jobs(
    api: ApiClient, cluster: LocalCluster, count: int, seconds: float, **spec: Any
) -> list[str]:
    """Submit count marking jobs and wait until each runs and has marked its start."""
    ids = [
        await api.submit(marks.job_command(seconds), idempotency_key=str(uuid.uuid4()), **spec)
        for _ in range(count)
    ]
    files = mark_files(cluster)
    await wait_until(
        lambda: {m.job for m in marks.read(files) if m.kind == "start"} >= set(ids),
        30,
        "every job to mark its start",
    )
    return ids


async def cut_off(
    cluster: LocalCluster, api: ApiClient, cut: list[Relay]
) -> tuple[list[str], float]:
    """Long jobs on the victim, its links cut until every job runs again elsewhere."""
    # Once a job placed on the victim ran, the leader's view has the victim's record.
    probe = await api.wait_for(await api.submit("true", node=VICTIM))
    assert probe["state"] == "SUCCEEDED", probe
    ids = await start_long_jobs(api, cluster, JOBS, JOB_SECONDS, retries=1)
    jobs = await records(api, ids)
    assert {j.node for j in jobs.values()} == {VICTIM}, {i: j.node for i, j in jobs.items()}
    for relay in cut:
        relay.freeze()
    cut_at = time.monotonic()
    await wait_records(
        api,
        ids,
        lambda j: j.attempt >= 2 and str(j.state) in {"RUNNING", *FINAL},
        TTL + fencing.lost_grace(TTL) + 20,
        "every job to run again on another node",
    )
    # Let the retries run a while with the cut still there: any overlap would show.
    await asyncio.sleep(2)
    held = time.monotonic() - cut_at
    for relay in cut:
        relay.thaw()
    return ids, held


def assert_ran_once_each_without_overlap(
    cluster: LocalCluster, ids: list[str], jobs: dict[str, Job]
) -> dict[str, float]:
    seen = marks.read(mark_files(cluster))
    assert marks.overlaps(seen) == []
    assert marks.ends(seen) == dict.fromkeys(ids, 1)
    for job in jobs.values():
        assert str(job.state) == "SUCCEEDED", (job.id, job.state, job.reason)
        first, last = job.attempts[0], job.attempts[-1]
        assert len(job.attempts) == 2, job.attempts
        assert (first.node, first.state, first.reason) == (VICTIM, "FAILED", "node lost")
        assert last.node != VICTIM
    assert check_jobs(ids, jobs) == []
    return marks.gaps(seen)


async def test_an_agent_cut_off_from_etcd_stops_its_jobs_before_they_run_elsewhere(
    relays: list[Relay], cluster_factory: Any
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST, cpus=CPUS, start=False)
    etcd = Relay(cluster.etcd.port).start()
    relays.append(etcd)
    cluster.agents[VICTIM].config["etcd"]["endpoints"] = [etcd.url("http")]
    await cluster.astart()
    async with ApiClient(cluster.nats_url) as api:
        ids, held = await cut_off(cluster, api, [etcd])
        jobs = await wait_records(
            api, ids, lambda j: str(j.state) in FINAL, JOB_SECONDS + 20, "the jobs to end"
        )
    gaps = assert_ran_once_each_without_overlap(cluster, ids, jobs)
    assert etcd.connections > 0 and held > TTL
    print(f"cut for {held:.1f}s; gap between attempts: min {min(gaps.values()):.2f}s")


async def test_an_agent_cut_off_from_etcd_and_nats_stops_its_jobs_too(
    relays: list[Relay], cluster_factory: Any
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST, cpus=CPUS, start=False)
    etcd, nats = Relay(cluster.etcd.port).start(), Relay(cluster.nats.port).start()
    relays.extend([etcd, nats])
    victim = cluster.agents[VICTIM]
    victim.config["etcd"]["endpoints"] = [etcd.url("http")]
    victim.config["nats"]["urls"] = [nats.url("nats")]
    await cluster.astart()
    async with ApiClient(cluster.nats_url) as api:
        ids, held = await cut_off(cluster, api, [etcd, nats])
        jobs = await wait_records(
            api, ids, lambda j: str(j.state) in FINAL, JOB_SECONDS + 20, "the jobs to end"
        )
    gaps = assert_ran_once_each_without_overlap(cluster, ids, jobs)
    assert nats.connections > 0 and held > TTL
    print(f"cut for {held:.1f}s; gap between attempts: min {min(gaps.values()):.2f}s")


async def test_a_job_that_ended_while_its_agent_was_cut_off_keeps_its_outcome(
    relays: list[Relay], cluster_factory: Any
) -> None:
    """It ended before the deadline; killing nothing, the fence must not record it
    as cut off (and run it again): its end is written when the link is back."""
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST, start=False)
    etcd = Relay(cluster.etcd.port).start()
    relays.append(etcd)
    cluster.agents[VICTIM].config["etcd"]["endpoints"] = [etcd.url("http")]
    await cluster.astart()
    async with ApiClient(cluster.nats_url) as api:
        (job_id,) = await start_long_jobs(api, cluster, 1, 1.5, node=VICTIM, retries=1)
        etcd.freeze()
        files = mark_files(cluster)
        await wait_until(lambda: marks.ends(marks.read(files))[job_id] == 1, 10, "its end")
        # Past the deadline (and the lease's expiry), short of the leader's grace.
        await asyncio.sleep(TTL + 1)
        etcd.thaw()
        (job,) = (
            await wait_records(api, [job_id], lambda j: str(j.state) in FINAL, 30, "its end")
        ).values()
    assert (str(job.state), len(job.attempts), job.reason) == ("SUCCEEDED", 1, "exit code 0")
    seen = marks.read(mark_files(cluster))
    assert [(r.attempt, r.host) for r in marks.runs(seen)] == [(1, VICTIM)]


OUTAGE_TTL = 5
OUTAGE = 120.0
# A watchdog as short as this TTL allows: the agents must keep pinging through it.
WATCHDOG_USEC = 1_500_000


async def test_all_of_etcd_stopped_for_two_minutes_kills_no_job(cluster_factory: Any) -> None:
    overrides = {**FAST, "node_ttl": OUTAGE_TTL}
    cluster: LocalCluster = cluster_factory(3, agent_overrides=overrides, start=False)
    listeners = {
        name: DatagramListener(f"@schedagent-fence-{uuid.uuid4().hex}", parse_notify)
        for name in cluster.agents
    }
    try:
        for name, agent in cluster.agents.items():
            agent.env = {
                **(agent.env or {}),
                "NOTIFY_SOCKET": listeners[name].address,
                "WATCHDOG_USEC": str(WATCHDOG_USEC),
            }
        await cluster.astart()
        async with ApiClient(cluster.nats_url) as api:
            # Three end during the outage (recorded once etcd is back), three after it.
            short = await start_long_jobs(api, cluster, 3, 45)
            long = await start_long_jobs(api, cluster, 3, OUTAGE + 15)
            cluster.etcd.stop()
            stopped = time.time()
            await asyncio.sleep(OUTAGE)  # the outage itself
            cluster.etcd.start()
            back = time.time()
            ids = short + long
            jobs = await wait_records(
                api, ids, lambda j: str(j.state) in FINAL, 60, "the jobs to end"
            )
        pings = {name: _ping_times(listener) for name, listener in listeners.items()}
    finally:
        for listener in listeners.values():
            listener.close()
    seen = marks.read(mark_files(cluster))
    assert marks.overlaps(seen) == []
    assert marks.ends(seen) == dict.fromkeys(ids, 1)
    assert {(r.job, r.attempt) for r in marks.runs(seen)} == {(i, 1) for i in ids}
    for job in jobs.values():
        assert str(job.state) == "SUCCEEDED" and len(job.attempts) == 1, job.attempts
    for job_id in short:
        attempt = jobs[job_id].attempts[0]
        assert attempt.ended_at is not None and stopped < attempt.ended_at < back
        assert jobs[job_id].updated_at >= back  # recorded once etcd was back
    assert check_jobs(ids, jobs) == []
    assert all(agent.running and agent.starts == 1 for agent in cluster.agents.values())
    watchdog = WATCHDOG_USEC / 1e6
    for name, times in pings.items():
        during = [t for t in times if t > time.monotonic() - OUTAGE - 60]
        worst = max(b - a for a, b in itertools.pairwise(during))
        assert worst < watchdog, f"{name}: no ping for {worst:.2f}s during the outage"


def _ping_times(listener: DatagramListener[dict[str, str]]) -> list[float]:
    return [m.at for m in listener.messages() if "WATCHDOG" in m.body]
