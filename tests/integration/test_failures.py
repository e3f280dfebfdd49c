"""Failure semantics proven with kills: agents, the leader, NATS and etcd die mid-work."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import etcdhttp
from apiclient import FINAL, ApiClient
from helpers import live_processes_with, marker, wait_until, wait_until_served
from schedagent.core import fencing
from schedagent.core.model import Job
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.invariants import check_executions, check_jobs

TTL = 3
FAST = {
    "node_ttl": TTL,
    "jobs": {
        "retry_backoff": 0.2,
        "dispatch_timeout": 2.0,
        "kill_grace": 1.0,
        "drain_timeout": 5.0,
    },
}
SCHEDCTL = str(Path(sys.executable).parent / "schedctl")


async def records(api: ApiClient) -> dict[str, Job]:
    jobs = await api.list_all()
    return {j["id"]: Job.from_dict(j) for j in jobs}


async def assert_invariants(api: ApiClient, accepted: list[str], ran: Path | None = None) -> None:
    """The records' invariants; with ran, the jobs' own marks agree with the records."""
    found = await records(api)
    assert check_jobs(accepted, found) == []
    if ran is not None:
        mine = {job_id: found[job_id] for job_id in accepted}
        assert check_executions(marks.read_file(ran), mine) == []


async def test_worker_killed_mid_job_is_retried_elsewhere_within_ttl(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        retried = await api.submit(marks.marked(f"sleep 2; echo done-{marker()}", ran), retries=1)
        spent = await api.submit(marks.marked(f"sleep {marker()}", ran, beat=True), retries=0)
        job = await api.wait_for(retried, {"RUNNING"})
        victim = job["node"]
        # Put the second job on the same node, so one kill tests both outcomes.
        other = await api.get(spent)
        canceled = []
        if other["node"] != victim:
            await api.call("cancel", id=spent)
            canceled.append(spent)
            spent = await api.submit(marks.marked(f"sleep {marker()}", ran, beat=True), node=victim)
        await api.wait_for(spent, {"RUNNING"})
        cluster.agents[victim].kill()
        killed_at = time.monotonic()

        # Retried after the lease (refreshed up to TTL/3 before the kill) and the grace
        # the leader gives a lost node's agent to kill its jobs (docs/semantics.md).
        grace = fencing.lost_grace(TTL)
        moved = await api.get(retried)
        while moved["attempt"] == 1:
            waited = time.monotonic() - killed_at
            assert waited < TTL + grace + 2, "attempt 1 not closed within TTL + grace + 2 s"
            moved = await api.get(retried)
            await asyncio.sleep(0.05)
        assert time.monotonic() - killed_at > 2 * TTL / 3 + grace - 0.3, "retried too early"
        assert moved["attempts"][0]["reason"] == "node lost"
        failed = await api.wait_for(spent, FINAL, TTL + grace + 2)
        assert (failed["state"], failed["reason"]) == ("FAILED", "node lost")

        done = await api.wait_for(retried, deadline=20)
        assert done["state"] == "SUCCEEDED" and done["attempts"][-1]["node"] != victim
        # From the jobs' side: attempt 1 (outliving its agent, as outside systemd) was
        # over before attempt 2 began elsewhere.
        await assert_invariants(api, [retried, spent, *canceled], ran)


async def test_late_report_of_a_lost_node_is_fenced(cluster_factory: Any, tmp_path: Path) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url, try_timeout=0.5) as api:
        # Shorter than the TTL: it is over before the leader retries it elsewhere.
        job_id = await api.submit(marks.marked("sleep 1; echo late", ran), retries=1)
        victim = (await api.wait_for(job_id, {"RUNNING"}))["node"]
        # RUNNING is written before the command starts (in its cgroup, released by the
        # agent): freeze the agent only once the command itself has begun.
        await wait_until(lambda: _started(ran, job_id), 10, "attempt 1's command to start")
        cluster.agents[victim].pause()  # frozen past its lease: the cluster moves on
        try:
            # Retried T + grace after its last refresh (docs/semantics.md), plus etcd's
            # and the leader's lag. Resumed only once attempt 2 is placed: back sooner,
            # the victim (registered again) could take its own retry.
            await wait_until_attempt(api, job_id, 2, TTL + fencing.lost_grace(TTL) + 2)
            await api.wait_for(job_id, {"ASSIGNED", "RUNNING", *FINAL}, deadline=10)
        finally:
            cluster.agents[victim].resume()
        # Back, the victim learns how its attempt ended and reports it: once it runs
        # nothing (its node record says so), the report has been made and judged.
        await wait_until(lambda: _runs_nothing(cluster, victim), 20, f"{victim} to report")
        done = await api.wait_for(job_id, deadline=30)
    first, second = done["attempts"]
    # The late report would have made attempt 1 SUCCEEDED (exit code 0): it was refused.
    assert (first["node"], first["state"], first["reason"]) == (victim, "FAILED", "node lost")
    assert first["exit_code"] is None
    assert (done["state"], second["state"], done["attempt"]) == ("SUCCEEDED", "SUCCEEDED", 2)
    assert second["node"] != victim
    assert sorted(marks.by_attempt(marks.read_file(ran))) == [(job_id, 1), (job_id, 2)]
    assert check_executions(marks.read_file(ran), {job_id: Job.from_dict(done)}) == []
    log = cluster.agents[victim].log_tail(400)
    assert "result not recorded" in log or "killing it" in log  # and it says so


def _started(ran: Path, job_id: str) -> bool:
    return ran.exists() and marks.starts(marks.read_file(ran))[(job_id, 1)] > 0


def _runs_nothing(cluster: LocalCluster, node: str) -> bool:
    raw = etcdhttp.get(cluster.etcd_endpoint, f"{cluster.etcd_prefix}/nodes/{node}")
    return raw is not None and json.loads(raw)["running_jobs"] == 0


async def wait_until_attempt(
    api: ApiClient, job_id: str, attempt: int, deadline: float
) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        job = await api.get(job_id)
        if job["attempt"] >= attempt:
            return job
        if time.monotonic() > end:
            raise AssertionError(f"job {job_id} still at attempt {job['attempt']}: {job}")
        await asyncio.sleep(0.05)


async def test_restarted_agent_closes_its_old_attempts_and_kills_leftovers(
    cluster_factory: Any,
) -> None:
    # A long TTL: the agent is back long before its old lease could expire.
    cluster: LocalCluster = cluster_factory(3, agent_overrides={**FAST, "node_ttl": 15})
    async with ApiClient(cluster.nats_url) as api:
        m = marker()
        job_id = await api.submit(f"sleep {m}", retries=1, node="node2")
        await api.wait_for(job_id, {"RUNNING"})
        await wait_until(lambda: bool(live_processes_with(f"sleep {m}")), 10, "the job's process")
        agent = cluster.agents["node2"]
        agent.kill()
        leftovers = {p.pid for p in live_processes_with(f"sleep {m}")}
        assert leftovers, "outside systemd the job outlives its agent"
        agent.start()

        def leftovers_gone() -> bool:
            return not leftovers & {p.pid for p in live_processes_with(f"sleep {m}")}

        await wait_until(leftovers_gone, 20, "the leftovers to be killed")
        job = await wait_until_attempt(api, job_id, 2, 20)
        assert job["attempts"][0]["reason"] == "agent restarted"
        assert job["attempts"][0]["state"] == "FAILED"
        await api.call("cancel", id=job_id)
        await api.wait_for(job_id)
        await assert_invariants(api, [job_id])


async def test_leader_killed_mid_placement_loses_nothing(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        leader = await api.leader_node()
        ids = await asyncio.gather(
            *(
                api.submit(marks.marked(f"sleep 0.{i % 5}; echo {i}", ran), retries=2)
                for i in range(60)
            )
        )
        cluster.agents[leader].kill()
        survivors = [name for name in cluster.agents if name != leader]
        new_leader = await api.leader_node(deadline=TTL + 5, not_=leader)
        assert new_leader in survivors
        more = [await api.submit(marks.marked("echo after", ran), retries=2) for _ in range(5)]
        jobs = await api.wait_all(list(ids) + more, deadline=60)
        assert all(j["state"] == "SUCCEEDED" for j in jobs.values()), [
            (j["id"], j["state"], j["reason"]) for j in jobs.values() if j["state"] != "SUCCEEDED"
        ]
        await assert_invariants(api, list(ids) + more, ran)


async def test_after_a_leader_dies_no_job_is_placed_on_its_node(cluster_factory: Any) -> None:
    # A long TTL: the dead leader's node record outlives the failover by far.
    ttl = 20
    cluster: LocalCluster = cluster_factory(3, agent_overrides={**FAST, "node_ttl": ttl})
    async with ApiClient(cluster.nats_url) as api:
        old = await api.leader_node()
        cluster.agents[old].kill()
        await api.leader_node(deadline=10, not_=old)
        assert old in {n["name"] for n in (await api.call("nodes"))["nodes"]}, "still listed"
        ids = [await api.submit(f"echo after-{i}") for i in range(12)]
        jobs = await api.wait_all(ids, deadline=ttl / 2)
        placed = [(a["node"], j["state"]) for j in jobs.values() for a in j["attempts"]]
        assert all(node != old and state == "SUCCEEDED" for node, state in placed), placed


async def test_paused_leader_is_deposed_fenced_and_steps_down(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        old = await api.leader_node()
        cluster.agents[old].pause()
        try:
            new = await api.leader_node(deadline=TTL + 5, not_=old)
            ids = [
                await api.submit(marks.marked("echo while-paused", ran), retries=1)
                for _ in range(10)
            ]
            jobs = await api.wait_all(ids, deadline=30)
            assert all(j["state"] == "SUCCEEDED" for j in jobs.values())
        finally:
            cluster.agents[old].resume()
        # Back, the old leader stands again behind the new one: its candidate key is
        # newer, so whatever it still wrote from its stale view failed the fence.
        await wait_until(
            lambda: _candidate_revisions(cluster).get(old, 0) > _candidate_revisions(cluster)[new],
            15,
            "the old leader to stand again behind the new one",
        )
        assert (await api.call("leader"))["leader"]["node"] == new
        after = [
            await api.submit(marks.marked("echo after-resume", ran), retries=1) for _ in range(10)
        ]
        await api.wait_all(after, deadline=30)
        # Every job placed once and run once: no stale placement of the old leader's
        # reached a record or a node.
        found = await records(api)
        again = {
            i: [(a.n, a.node, a.state, a.reason) for a in found[i].attempts] for i in ids + after
        }
        assert all(len(tries) == 1 for tries in again.values()), {
            i: tries for i, tries in again.items() if len(tries) != 1
        }
        await assert_invariants(api, ids + after, ran)
        assert sorted(marks.by_attempt(marks.read_file(ran))) == sorted((i, 1) for i in ids + after)
    assert "no longer leader" in cluster.agents[old].log_tail(300)  # and it says so


def _candidate_revisions(cluster: LocalCluster) -> dict[str, int]:
    """Each node's election candidacy: the create revision of its key (its token)."""
    keys = etcdhttp.revisions(cluster.etcd_endpoint, f"{cluster.etcd_prefix}/election/")
    return {value.decode(): created for value, created in keys}


async def test_nats_restart_is_survived_and_wait_resumes(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    env = {
        **os.environ,
        "SCHEDCTL_NATS_URL": cluster.nats_url,
        "SCHEDCTL_KEY": str(cluster.key_path),
    }
    waiter = subprocess.Popen(  # noqa: ASYNC220 - started once, reaped in a thread below
        [SCHEDCTL, "submit", "--cmd", "sleep 3; echo after-restart", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    async with ApiClient(cluster.nats_url) as api:
        running = await wait_for_any_running(api)
        cluster.nats.kill()
        cluster.nats.start()
    out, err = await asyncio.to_thread(waiter.communicate, timeout=60)
    assert (waiter.returncode, out) == (0, "after-restart\n"), err
    async with ApiClient(cluster.nats_url) as api:
        ids = [await api.submit(f"echo new-{i}") for i in range(10)]
        jobs = await api.wait_all(ids, deadline=40)
        assert all(j["state"] == "SUCCEEDED" for j in jobs.values())
        await assert_invariants(api, [*ids, running])


async def test_nats_restarted_without_its_storage_is_survived(cluster_factory: Any) -> None:
    # Its streams and consumers are gone with its storage. Before: every dispatch
    # failed ("no response from stream") or went to a consumer nobody fetched from,
    # and jobs stayed ASSIGNED for good.
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        assert (await api.wait_for(await api.submit("echo before")))["state"] == "SUCCEEDED"
    cluster.nats.kill()
    shutil.rmtree(cluster.nats.store_dir)
    cluster.nats.start()
    async with ApiClient(cluster.nats_url) as api:
        await wait_until_served(api.nc, deadline=15)
        ids = [await api.submit(f"echo after-{i}", node=f"node{i % 3 + 1}") for i in range(9)]
        jobs = await api.wait_all(ids, deadline=40)
        assert all(j["state"] == "SUCCEEDED" for j in jobs.values()), jobs
        await assert_invariants(api, ids)


async def test_a_deleted_dispatch_consumer_is_made_again(cluster_factory: Any) -> None:
    # Before: the worker fetched from a consumer that no longer existed, which only
    # ever times out, and its jobs stayed ASSIGNED.
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        assert (await api.wait_for(await api.submit("true", node="node1")))["state"] == "SUCCEEDED"
        await api.nc.jetstream().delete_consumer("SCHED_DISPATCH", "node-node1")
        ids = [await api.submit(f"echo after-{i}", node="node1") for i in range(5)]
        jobs = await api.wait_all(ids, deadline=30)
        assert all(j["state"] == "SUCCEEDED" for j in jobs.values()), jobs


async def test_an_attempt_a_live_node_does_not_take_up_goes_elsewhere(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # A follower frozen with its lease alive (a long TTL): its record says it is
    # there, so the leader places on it and nothing takes the dispatch up. Before:
    # ASSIGNED there until the lease ran out (30 s).
    ttl = 30
    overrides = {**FAST, "node_ttl": ttl, "jobs": {**FAST["jobs"], "dispatch_timeout": 1.0}}
    cluster: LocalCluster = cluster_factory(
        2, agent_overrides=overrides, cpus={"node1": 2.0, "node2": 2.0}
    )
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        leader = await api.leader_node()
        frozen = next(name for name in cluster.agents if name != leader)
        # The leader's CPUs taken, so the job can only be placed on the frozen node.
        blocker = await api.submit("sleep 600", node=leader, cpus=2)
        await api.wait_for(blocker, {"RUNNING"})
        cluster.agents[frozen].pause()
        try:
            job_id = await api.submit(marks.marked("echo ran", ran), retries=0)
            placed = await api.wait_for(job_id, {"ASSIGNED"})
            assert placed["node"] == frozen
            back = await wait_until_attempt(api, job_id, 2, deadline=10)
            await api.call("cancel", id=blocker)
            job = await api.wait_for(job_id, deadline=15)
        finally:
            cluster.agents[frozen].resume()
    assert back["attempts"][0]["state"] == "handed back", back
    *before, last = job["attempts"]
    assert before and all(
        (a["node"], a["state"]) == (frozen, "handed back")
        and a["reason"].startswith("not taken up by its node after 3 dispatches")
        for a in before
    ), job["attempts"]
    assert (job["state"], last["node"]) == ("SUCCEEDED", leader), job
    records = {job_id: Job.from_dict(job)}
    assert check_executions(marks.read_file(ran), records) == []
    assert check_jobs([job_id], records) == []


async def wait_until_answering(api: ApiClient, job_id: str, deadline: float) -> None:
    """Until the agents read etcd again: ten `get`s in a row answer ok, not `unavailable`.

    Each agent's channel reconnects on its own backoff; ten answers spread over the
    queue group make it very likely every agent has.
    """
    end, in_a_row = time.monotonic() + deadline, 0
    while in_a_row < 10:
        reply = await api.raw("get", f'{{"v": 1, "id": "{job_id}"}}'.encode())
        in_a_row = in_a_row + 1 if reply.get("ok") else 0
        if time.monotonic() > end:
            raise AssertionError(f"agents still cannot read etcd {deadline}s after it is back")
        await asyncio.sleep(0.1)


async def wait_for_any_running(api: ApiClient, deadline: float = 20) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        running = (await api.call("list", state="RUNNING"))["jobs"]
        if running:
            return str(running[0]["id"])
        await asyncio.sleep(0.05)
    raise AssertionError("no job started running")


async def test_killing_the_etcd_member_in_use_fails_over(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST, etcd_members=3)
    async with ApiClient(cluster.nats_url) as api:
        first = await api.wait_for(await api.submit("echo before"))
        assert first["state"] == "SUCCEEDED"
        # gRPC's pick_first talks to the first endpoint it can reach: the first member.
        cluster.etcd_members[0].kill()
        ids = [await api.submit(f"echo after-{i}", retries=1) for i in range(10)]
        jobs = await api.wait_all(ids, deadline=40)
        assert all(j["state"] == "SUCCEEDED" for j in jobs.values())
        assert all(agent.running for agent in cluster.agents.values())
        assert (await api.call("leader"))["leader"] is not None


async def test_all_of_etcd_down_for_a_while(cluster_factory: Any, tmp_path: Path) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        running = await api.submit(marks.marked("sleep 2; echo survived", ran))
        await api.wait_for(running, {"RUNNING"})
        cluster.etcd.kill()
        body = {"v": 1, "spec": api.signed({"cmd": "true"})}
        reply = await api.raw("submit", json.dumps(body).encode())
        assert reply["ok"] is False and reply["code"] == "unavailable"
        await asyncio.sleep(4)  # the outage itself: longer than the lease TTL
        assert all(agent.running for agent in cluster.agents.values())
        cluster.etcd.start()
        await wait_until_answering(api, running, deadline=15)
        done = await api.wait_for(running, deadline=40)
        assert done["state"] in FINAL
        ids = [await api.submit(marks.marked(f"echo back-{i}", ran), retries=1) for i in range(10)]
        jobs = await api.wait_all(ids, deadline=40)
        assert all(j["state"] == "SUCCEEDED" for j in jobs.values())
        await assert_invariants(api, [running, *ids], ran)
