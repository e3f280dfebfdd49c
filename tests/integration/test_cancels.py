"""A cancel holds: once asked for, no path (a retry, a lost node, a placement) runs the
job again. Judged from the jobs' own marks as well as their records."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import etcdhttp
from apiclient import ApiClient
from helpers import wait_until
from schedagent.core import transitions
from schedagent.core.model import Job, JobState, new_job_id
from schedagent.core.names import Keys
from schedagent.core.spec import parse_spec
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.invariants import check_cancels, check_executions, check_jobs
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Store

FAST = {"jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 1.0}}


def check_ran(ran: Path, job: dict[str, Any], acknowledged: float, grace: float) -> None:
    records = {job["id"]: Job.from_dict(job)}
    runs = marks.read_file(ran)
    assert check_executions(runs, records) == []
    assert check_cancels(runs, {job["id"]: acknowledged}, records, grace) == []
    assert check_jobs([job["id"]], records) == []


async def test_a_job_that_fails_after_its_cancel_is_not_retried(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # The cancel is recorded but has not reached the worker (its control message was
    # lost), and the job fails by itself meanwhile with retries left. Before: retried.
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    ran, go = tmp_path / "marks", tmp_path / "go"
    store = Store([cluster.etcd_endpoint])
    await store.connect()
    try:
        async with ApiClient(cluster.nats_url) as api:
            cmd = f"while [ ! -e {go} ]; do sleep 0.05; done; exit 1"
            job_id = await api.submit(marks.marked(cmd, ran), retries=2)
            await api.wait_for(job_id, {"RUNNING"})
            jobs = JobStore(store, Keys(cluster.etcd_prefix))
            await jobs.update(job_id, lambda j: transitions.cancel(j, time.time()))
            acknowledged = time.time()
            go.touch()
            job = await api.wait_for(job_id, deadline=20)
    finally:
        await store.close()
    assert (job["state"], job["reason"], job["attempt"]) == ("CANCELED", "canceled", 1), job
    assert job["attempts"][0]["reason"] == "exit code 1"
    check_ran(ran, job, acknowledged, grace=2.0)


async def test_a_job_whose_node_is_lost_after_its_cancel_is_not_retried(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # The node is frozen when the cancel comes, so its lease runs out with the job
    # RUNNING and retries left. Before: the leader put it back in the queue and it ran
    # again elsewhere.
    cluster: LocalCluster = cluster_factory(2, agent_overrides={**FAST, "node_ttl": 3})
    ran = tmp_path / "marks"
    # Each try routed to the frozen agent is lost; short tries make the cancel land on
    # the live one well before the frozen one's 3 s lease runs out (at 2 s a try, five
    # unlucky draws in a row let the retry win the race and the test fail).
    async with ApiClient(cluster.nats_url, try_timeout=0.25) as api:
        job_id = await api.submit(marks.marked("sleep 600", ran, beat=True), retries=2)
        victim = cluster.agents[(await api.wait_for(job_id, {"RUNNING"}))["node"]]
        # Frozen once the command has begun (RUNNING is written before its cgroup lets
        # it start), so there is a process for the kill to stop.
        await wait_until(
            lambda: ran.exists() and (job_id, 1) in marks.by_attempt(marks.read_file(ran)),
            10,
            "the command to start",
        )
        paused_at = time.time()
        victim.pause()
        try:
            await api.call("cancel", id=job_id)
            acknowledged = time.time()
            job = await api.wait_for(job_id, deadline=20)
        finally:
            victim.resume()
        resumed_at = time.time()
        # Back, the frozen agent finds its lease gone and its attempt not its own: it
        # kills the process (before the lease-lost path or the reconciler, whichever).
        await wait_until(
            lambda: marks.by_attempt(marks.read_file(ran))[(job_id, 1)].last < time.time() - 1.0,
            15,
            "the kill",
        )
    assert (job["state"], job["reason"], job["attempt"]) == ("CANCELED", "canceled", 1), job
    assert job["attempts"][0]["reason"] == "node lost"
    check_ran(ran, job, acknowledged, grace=resumed_at - paused_at + 10.0)


async def test_a_queued_job_whose_cancel_was_asked_for_is_never_placed(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # A record an older version could leave: PENDING with its cancel asked for (after a
    # retry or a hand-back). Before: placed and run.
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        now = time.time()
        spec = parse_spec(api.signed({"cmd": marks.marked("echo ran", ran)}))
        job = Job(
            id=new_job_id(now),
            spec=spec,
            state=JobState.PENDING,
            submitted_at=now,
            cancel_requested=True,
            updated_at=now,
        )
        etcdhttp.put(cluster.etcd_endpoint, f"{cluster.etcd_prefix}/jobs/{job.id}", job.to_json())
        done = await api.wait_for(job.id, deadline=15)
        await asyncio.sleep(1.0)  # a placed job would have written its start mark by now
    assert (done["state"], done["attempts"]) == ("CANCELED", []), done
    assert marks.read_file(ran) == []
