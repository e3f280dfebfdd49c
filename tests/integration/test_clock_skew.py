"""Clocks that disagree: an agent runs under libfaketime, its wall clock set off the others'.

A retry's backoff is kept on the leader's clock (one clock). Retention compares the end
time the worker wrote with the leader's clock: it shifts by the skew, as
docs/semantics.md says, and no more.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

import etcdhttp
from apiclient import ApiClient
from helpers import wait_until
from schedagent.dev.cluster import LocalCluster

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


@pytest.fixture(autouse=True)
def _faketime() -> None:
    # Fail, not skip, like the servers: a missing tool must not turn the suite green.
    if not os.path.exists(FAKETIME_LIB):
        pytest.fail(f"{FAKETIME_LIB} is missing; run scripts/setup", pytrace=False)


async def skewed_follower(
    cluster_factory: Any, skew: str, **overrides: Any
) -> tuple[LocalCluster, str]:
    """A cluster whose follower runs with its wall clock moved by skew (e.g. "+120"),
    the leader with the true one; and that follower's name."""
    cluster: LocalCluster = await asyncio.to_thread(cluster_factory, 2, **overrides)
    async with ApiClient(cluster.nats_url) as api:
        leader = await api.leader_node()
    follower = cluster.agents[next(n for n in cluster.agents if n != leader)]
    follower.kill()  # its record goes with its lease; the leader stays (oldest candidate)
    key = f"{cluster.etcd_prefix}/nodes/{follower.name}"
    await wait_until(lambda: etcdhttp.get(cluster.etcd_endpoint, key) is None, 10, "its lease")
    assert follower.env is not None
    # Only the wall clock: leases and timers run on the monotonic one.
    follower.env.update(LD_PRELOAD=FAKETIME_LIB, FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1")
    await asyncio.to_thread(follower.start)
    await asyncio.to_thread(cluster.wait_for_nodes, [follower.name])
    return cluster, follower.name


async def test_a_retry_waits_its_backoff_whatever_the_workers_clock(cluster_factory: Any) -> None:
    # The worker wrote not_before on its own clock, two minutes ahead of the leader's.
    # Before: the retry waited those two minutes.
    overrides = {"agent_overrides": {"node_ttl": 6, "jobs": {"retry_backoff": 0.2}}}
    cluster, worker = await skewed_follower(cluster_factory, "+120", **overrides)
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit("exit 1", retries=1, node=worker)
        job = await api.wait_for(job_id, deadline=15)
    # (A hand-back, if the loaded machine let a lease lapse, uses no retry: not counted.)
    ran = [a["reason"] for a in job["attempts"] if a["state"] != "handed back"]
    assert ran == ["exit code 1", "exit code 1"], job


async def test_retention_is_shifted_by_the_skew_and_no_more(cluster_factory: Any) -> None:
    # The worker's clock 10 s behind: its end time says the job ended 10 s earlier. The
    # record goes once its end time and its submit time (in its id, from the agent that
    # took the submit) are both older than the retention on the leader's clock.
    retention, skew = 12.0, 10.0
    overrides = {"agent_overrides": {"node_ttl": 3, "jobs": {"retention": retention}}}
    cluster, worker = await skewed_follower(cluster_factory, f"-{skew:g}", **overrides)
    async with ApiClient(cluster.nats_url) as api:
        job = await api.wait_for(await api.submit("true", node=worker), deadline=15)
        ended = time.time()
    assert job["state"] == "SUCCEEDED", job
    key = f"{cluster.etcd_prefix}/done/{job['id']}"  # where a finished record lives
    await asyncio.sleep(retention - skew - 1.0)
    assert etcdhttp.get(cluster.etcd_endpoint, key) is not None, "gone before retention - skew"
    sweep = retention / 10
    await wait_until(
        lambda: etcdhttp.get(cluster.etcd_endpoint, key) is None,
        ended + retention + skew + sweep + 3 - time.time(),
        "the record deleted by retention + skew (and a sweep)",
    )
