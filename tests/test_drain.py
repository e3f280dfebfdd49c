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
from typing import Any

import pytest

from apiclient import ApiClient
from helpers import live_processes_with, marker, wait_until
from schedagent.devcluster import AgentProcess, LocalCluster
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


def _draining(cluster: LocalCluster, name: str) -> bool:
    return _node_record(cluster, name).get("draining") is True


def _node_record(cluster: LocalCluster, name: str) -> dict[str, Any]:
    key = base64.b64encode(f"{cluster.etcd_prefix}/nodes/{name}".encode()).decode()
    request = urllib.request.Request(
        f"{cluster.etcd_endpoint}/v3/kv/range", data=json.dumps({"key": key}).encode()
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as resp:
        kvs = json.load(resp).get("kvs", [])
    return dict(json.loads(base64.b64decode(kvs[0]["value"]))) if kvs else {}
