"""SIGTERM on a three-agent cluster: drain, hand back, exit 0, the job finishes elsewhere."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apiclient import ApiClient
from helpers import live_processes_with, marker, wait_until
from schedagent.core.model import Job
from schedagent.dev import marks
from schedagent.dev.cluster import AgentProcess, LocalCluster
from schedagent.dev.invariants import check_cancels, check_executions, check_jobs, check_placements
from sdsockets import DatagramListener, parse_notify

Notify = DatagramListener[dict[str, str]]
ClusterFactory = Callable[..., LocalCluster]
OVERRIDES = {"cpus": 2.0, "node_ttl": 4, "jobs": {"kill_grace": 1.0, "retry_backoff": 0.2}}


@pytest.fixture
def make(cluster_factory: ClusterFactory) -> Iterator[Any]:
    """A started cluster whose agents each have their own NOTIFY_SOCKET listener."""
    listeners: list[Notify] = []

    async def start(drain_timeout: float) -> tuple[LocalCluster, dict[str, Notify]]:
        overrides = {**OVERRIDES, "jobs": {**OVERRIDES["jobs"], "drain_timeout": drain_timeout}}
        cluster = cluster_factory(3, agent_overrides=overrides, start=False)
        notify = {}
        for name, agent in cluster.agents.items():
            listener = DatagramListener(f"@schedagent-drain-{uuid.uuid4().hex}", parse_notify)
            listeners.append(listener)
            notify[name] = listener
            assert agent.env is not None
            agent.env["NOTIFY_SOCKET"] = listener.address
        await cluster.astart()
        return cluster, notify

    yield start
    for listener in listeners:
        listener.close()


async def running_on(api: ApiClient, cluster: LocalCluster, cmd: str) -> tuple[str, AgentProcess]:
    job_id = await api.submit(cmd)
    job = await api.wait_for(job_id, {"RUNNING"})
    return job_id, cluster.agents[job["node"]]


async def exit_code(agent: AgentProcess, within: float) -> int | None:
    return await asyncio.to_thread(agent.wait, within)


async def test_unfinished_job_is_handed_back_and_finishes_elsewhere(make: Any) -> None:
    cluster, notify = await make(drain_timeout=2.0)
    sleep = f"sleep 4.{marker()}"
    async with ApiClient(cluster.nats_url) as api:
        job_id, victim = await running_on(api, cluster, sleep)
        victim.terminate()
        stopping = await asyncio.to_thread(
            notify[victim.name].wait_for, lambda m: "STOPPING" in m, 10, "STOPPING=1"
        )
        assert stopping.body["STATUS"] == "stopping: draining 1 running job(s)"
        await wait_until(lambda: _draining(cluster, victim.name), 5, "the node marked draining")
        assert await exit_code(victim, 30) == 0
        assert "stopped: 0 finished, 1 handed back" in victim.log_tail(10)
        job = await api.wait_for(job_id, deadline=60)
    first, second = job["attempts"]
    assert job["state"] == "SUCCEEDED" and job["attempt"] == 2
    assert (first["node"], first["reason"]) == (victim.name, "agent stopped")
    assert second["node"] != victim.name
    assert not live_processes_with(sleep)


async def test_job_that_ends_within_the_drain_is_finished_not_handed_back(make: Any) -> None:
    cluster, _ = await make(drain_timeout=30.0)
    async with ApiClient(cluster.nats_url) as api:
        job_id, victim = await running_on(api, cluster, f"sleep 1.{marker()}")
        victim.terminate()
        assert await exit_code(victim, 30) == 0
        assert "stopped: 1 finished, 0 handed back" in victim.log_tail(10)
        job = await api.get(job_id)
    assert (job["state"], job["attempt"], job["node"]) == ("SUCCEEDED", 1, victim.name)


async def test_second_sigterm_stops_at_once(make: Any) -> None:
    cluster, _ = await make(drain_timeout=60.0)
    sleep = f"sleep 60.{marker()}"
    async with ApiClient(cluster.nats_url) as api:
        job_id, victim = await running_on(api, cluster, sleep)
        victim.terminate()
        await wait_until(
            lambda: "draining: waiting up to 60s" in victim.log_tail(10), 10, "the drain to begin"
        )
        started = time.monotonic()
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGTERM)
        assert await exit_code(victim, 15) == 0
        assert time.monotonic() - started < 10
        assert "stopped: 0 finished, 1 handed back" in victim.log_tail(10)
        job = await api.wait_for(job_id, {"RUNNING"}, deadline=30)
        assert job["attempt"] == 2 and job["node"] != victim.name
        await api.call("cancel", id=job_id)
        await api.wait_for(job_id, deadline=30)


async def test_a_cancel_during_the_drain_is_acted_on(make: Any, tmp_path: Path) -> None:
    # Before: the worker stopped listening for cancels when it stopped taking
    # dispatches, so the job ran on until the drain timed out, and then again elsewhere.
    cluster, _ = await make(drain_timeout=60.0)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        job_id, victim = await running_on(api, cluster, marks.marked("sleep 600", ran, beat=True))
        victim.terminate()
        # Once the drain waits for its job, the worker takes no more dispatches.
        await wait_until(
            lambda: "draining: waiting up to 60s" in victim.log_tail(10), 10, "the drain to begin"
        )
        await api.call("cancel", id=job_id)
        acknowledged = time.time()
        job = await api.wait_for(job_id, deadline=15)
        assert await exit_code(victim, 15) == 0
        assert "stopped: 1 finished, 0 handed back" in victim.log_tail(10)
    assert (job["state"], job["attempt"], job["reason"]) == ("CANCELED", 1, "canceled"), job
    records = {job_id: Job.from_dict(job)}
    runs = marks.read_file(ran)
    assert check_executions(runs, records) == []
    assert check_cancels(runs, {job_id: acknowledged}, records, grace=5.0) == []


def _draining(cluster: LocalCluster, name: str) -> bool:
    return _node_record(cluster, name).get("draining") is True


def _node_record(cluster: LocalCluster, name: str) -> dict[str, Any]:
    kvs = _etcd_range(cluster, f"{cluster.etcd_prefix}/nodes/{name}")
    return dict(json.loads(base64.b64decode(kvs[0]["value"]))) if kvs else {}


def _placed(cluster: LocalCluster) -> list[tuple[str, str]]:
    """(node, job id) of every key of the placement index."""
    prefix = f"{cluster.etcd_prefix}/placed/"
    kvs = _etcd_range(cluster, prefix, True)
    names = (base64.b64decode(kv["key"]).decode()[len(prefix) :].split("/") for kv in kvs)
    return [(node, job_id) for node, job_id in names]


def _etcd_range(cluster: LocalCluster, key: str, prefix: bool = False) -> list[dict[str, Any]]:
    """The key (or every key under it) as etcd's JSON gateway returns them."""
    body = {"key": base64.b64encode(key.encode()).decode()}
    if prefix:  # the range [key, key with its last byte + 1)
        body["range_end"] = base64.b64encode(key[:-1].encode() + bytes([ord(key[-1]) + 1])).decode()
    request = urllib.request.Request(
        f"{cluster.etcd_endpoint}/v3/kv/range", data=json.dumps(body).encode()
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as resp:
        return list(json.load(resp).get("kvs", []))


# Many small slots, so every node always holds jobs that are placed but not yet started.
ROLLING = {
    "cpus": 4.0,
    "node_ttl": 4,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "drain_timeout": 20.0},
}
JOB_CPUS = 0.25
SUBMITTERS = 8
JOBS_BETWEEN_RESTARTS = 150
# A follower, then the leader twice: leadership passes to the oldest candidate, so this
# restarts each agent once, and the leader placing jobs while it stops is covered too.
RESTART_LEADER = (False, True, True)


async def test_rolling_restart_under_load_fails_no_job(cluster_factory: ClusterFactory) -> None:
    """An upgrade's restarts, one agent after another, while short jobs with no retries
    keep coming: SIGTERM is a polite stop, so every job must still succeed."""
    cluster = await asyncio.to_thread(cluster_factory, 3, agent_overrides=ROLLING)
    accepted: list[str] = []
    stop = asyncio.Event()
    async with ApiClient(cluster.nats_url) as api:
        submitters = [
            asyncio.create_task(_submit_until(api, f"s{i}", accepted, stop))
            for i in range(SUBMITTERS)
        ]
        try:
            restarted: set[str] = set()
            for leader in RESTART_LEADER:
                name = await _pick(api, cluster, leader, restarted)
                await _restart_under_load(cluster, cluster.agents[name], accepted)
                restarted.add(name)
        finally:
            stop.set()
            await asyncio.gather(*submitters)
    records = await _final_records(cluster, accepted, 60)
    not_succeeded = [
        (i, j.state, j.reason, j.attempts) for i, j in records.items() if j.state != "SUCCEEDED"
    ]
    assert not_succeeded == [], f"{len(not_succeeded)} of {len(records)}: {not_succeeded[:3]}"
    assert check_jobs(accepted, records) == []
    assert check_placements(records, await asyncio.to_thread(_placed, cluster)) == []


async def _pick(api: ApiClient, cluster: LocalCluster, leader: bool, restarted: set[str]) -> str:
    """The leader, or a follower, among the agents not restarted yet."""
    end = time.monotonic() + 15
    while True:
        current = (await api.call("leader"))["leader"]
        if current is not None and current["node"] not in restarted:
            if leader:
                return str(current["node"])
            return next(n for n in cluster.agents if n not in restarted | {current["node"]})
        if time.monotonic() > end:
            raise AssertionError(f"no leader among the agents not restarted yet: {current}")
        await asyncio.sleep(0.1)


async def _restart_under_load(
    cluster: LocalCluster, victim: AgentProcess, accepted: list[str]
) -> None:
    """SIGTERM mid-stream, wait for a clean exit, start again, wait until registered."""
    wanted = len(accepted) + JOBS_BETWEEN_RESTARTS
    await wait_until(lambda: len(accepted) >= wanted, 20, f"{wanted} jobs before {victim.name}")
    victim.terminate()
    assert await exit_code(victim, 30) == 0
    await asyncio.to_thread(victim.start)
    await asyncio.to_thread(cluster.wait_for_nodes, [victim.name])


async def _submit_until(
    api: ApiClient, name: str, accepted: list[str], stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        spec = {"cmd": f"echo during restart {name}-{n}", "cpus": JOB_CPUS, "retries": 0}
        spec["idempotency_key"] = f"rolling-{name}-{n}"
        reply = await api.raw("submit", json.dumps({"v": 1, "spec": api.signed(spec)}).encode())
        if reply.get("ok"):
            accepted.append(reply["job"]["id"])
            n += 1
        else:
            await asyncio.sleep(0.1)  # e.g. "unavailable": resend, same key


async def _final_records(cluster: LocalCluster, ids: list[str], deadline: float) -> dict[str, Job]:
    """The jobs' records once all are final, read from etcd: hundreds of them are more
    than one NATS message (the API's `list`) may carry."""
    wanted, end = set(ids), time.monotonic() + deadline
    while True:
        kvs = []
        for prefix in ("jobs", "done"):  # live records, and final ones
            where = f"{cluster.etcd_prefix}/{prefix}/"
            kvs += await asyncio.to_thread(_etcd_range, cluster, where, True)
        jobs = [Job.from_json(base64.b64decode(kv["value"])) for kv in kvs]
        records = {job.id: job for job in jobs if job.id in wanted}
        unfinished = [i for i in wanted if i not in records or not records[i].state.final]
        if not unfinished:
            return records
        if time.monotonic() > end:
            raise AssertionError(f"{len(unfinished)} jobs not final after {deadline}s")
        await asyncio.sleep(0.25)
