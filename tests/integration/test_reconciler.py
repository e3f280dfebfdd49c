"""The reconciler: a RUNNING record with nothing behind it is closed, a process no
record gives this node is killed; judged from the process table and the jobs' marks."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import etcdhttp
from apiclient import ApiClient
from helpers import live_processes_with, marker, wait_until
from schedagent.core import transitions
from schedagent.core.model import Attempt, Job, JobState, new_job_id
from schedagent.core.spec import parse_spec
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.invariants import check_executions, check_jobs
from schedagent.host.jobprocs import job_attempts

TTL = 3
FAST = {"node_ttl": TTL, "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0}}
# A pass every 5 s, and the leader's view of a lost node: what the waits allow.
RECONCILE = 5.0


def node_lease(cluster: LocalCluster, node: str) -> int:
    raw = etcdhttp.get(cluster.etcd_endpoint, f"{cluster.etcd_prefix}/nodes/{node}")
    assert raw is not None, f"{node} is not registered"
    return int(json.loads(raw)["lease"])


async def test_a_running_record_whose_agent_never_started_it_is_handed_back(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # What a RUNNING write leaves when it commits but its reply is lost: the worker
    # naks, the redelivered dispatch finds the job RUNNING and drops it as stale, and
    # nothing runs. The record carries the agent's own lease, so the leader sees
    # nothing wrong. Before: RUNNING forever.
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        now = time.time()
        spec = parse_spec(api.signed({"cmd": marks.marked("echo ran", ran), "retries": 0}))
        lease = node_lease(cluster, "node1")
        attempt = Attempt(n=1, node="node1", assigned_at=now, started_at=now, lease=lease)
        job = Job(
            id=new_job_id(now),
            spec=spec,
            state=JobState.RUNNING,
            submitted_at=now,
            node="node1",
            attempts=[attempt],
        )
        p = cluster.etcd_prefix
        etcdhttp.put(cluster.etcd_endpoint, f"{p}/jobs/{job.id}", job.to_json())
        # As the leader's placement left it: the node's index names the attempt.
        etcdhttp.put(cluster.etcd_endpoint, f"{p}/placed/node1/{job.id}", b"1")
        done = await api.wait_for(job.id, deadline=RECONCILE + 15)
    first, second = done["attempts"]
    assert (first["state"], first["reason"]) == (transitions.HANDED_BACK, transitions.NEVER_STARTED)
    assert (done["state"], second["n"]) == ("SUCCEEDED", 2), done
    records = {job.id: Job.from_dict(done)}
    runs = marks.read_file(ran)
    assert list(marks.by_attempt(runs)) == [(job.id, 2)], runs
    assert check_executions(runs, records) == []
    assert check_jobs([job.id], records) == []


async def test_an_agent_back_after_its_ttl_kills_what_its_predecessor_left(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # Outside systemd a killed agent's jobs live on. Back after node_ttl, it finds its
    # attempts already closed by the leader, so the record no longer says RUNNING here;
    # the process must still go. Before: it ran on, with nothing to account for it.
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(marks.marked("sleep 600", ran, beat=True), node="node2")
        await api.wait_for(job_id, {"RUNNING"})
        await wait_until(lambda: (job_id, 1) in job_attempts(), 10, "the job's process")
        agent = cluster.agents["node2"]
        agent.kill()
        failed = await api.wait_for(job_id, deadline=TTL + 10)
        assert (failed["state"], failed["reason"]) == ("FAILED", "node lost"), failed
        assert (job_id, 1) in job_attempts(), "outside systemd the job outlives its agent"
        agent.start()
        await asyncio.to_thread(cluster.wait_for_nodes, ["node2"])
        await wait_until(
            lambda: (job_id, 1) not in job_attempts(), RECONCILE + 10, "the leftover killed"
        )
        stopped_at = time.time()
        await asyncio.sleep(2 * marks.BEAT + 0.5)
    runs = marks.read_file(ran)
    assert marks.by_attempt(runs)[(job_id, 1)].last < stopped_at, (
        "it still wrote marks after it was killed"
    )
    assert check_executions(runs, {job_id: Job.from_dict(failed)}) == []


async def test_processes_a_finished_job_left_behind_are_killed(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # A job's shell exits and leaves a background process, and one that left its
    # process group and session (setsid): both carry the attempt in their environment.
    # The reconciler reads the process table only when an attempt ended (an idle agent
    # does not), so this is the case it must still catch.
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    m = marker()
    pids = [tmp_path / "background", tmp_path / "setsid"]
    leave = f"sh -c 'exec sleep {m}' >/dev/null 2>&1 & echo $! > {pids[0]}; "
    leave += f"setsid sh -c 'exec sleep {m}' >/dev/null 2>&1 & echo $! > {pids[1]}; "
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(leave + "echo done")
        done = await api.wait_for(job_id, deadline=20)
        assert (done["state"], done["output_tail"]) == ("SUCCEEDED", "done\n"), done
        left = {int(path.read_text()) for path in pids}

        def leftovers() -> set[int]:
            return left & {p.pid for p in live_processes_with(f"sleep {m}")}

        await wait_until(lambda: not leftovers(), RECONCILE + 10, "the leftovers killed")
