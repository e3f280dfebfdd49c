"""schedctl node cordon / uncordon / drain and explain, on a real cluster (agents as processes).

Where each job ran is taken from the marks the jobs write in their agent's working
directory (dev/marks.py), not from the records the scheduler wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from apiclient import ApiClient
from schedagent.ctl.exits import EXIT_ERROR, EXIT_HOSTS_MISSED, EXIT_NOT_FOUND
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")
FAST = {"cpus": 2.0, "node_ttl": 4, "jobs": {"retry_backoff": 0.2, "kill_grace": 1.0}}


async def schedctl(cluster: LocalCluster, *args: str, key: bool = True) -> tuple[int, str]:
    env = {**os.environ, "SCHEDCTL_NATS_URL": cluster.nats_url}
    env["SCHEDCTL_KEY"] = str(cluster.key_path) if key else ""
    env["HOME"] = str(cluster.agents["node1"].dir)  # no default key found without --key
    done = await asyncio.to_thread(
        subprocess.run, [SCHEDCTL, *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


def hosts_of(cluster: LocalCluster, ids: list[str]) -> dict[str, set[str]]:
    """The nodes each job's marks were written on (its agent's working directory)."""
    files = {name: agent.dir / marks.FILE for name, agent in cluster.agents.items()}
    found: dict[str, set[str]] = {job: set() for job in ids}
    for mark in marks.read(files):
        if mark.job in found and mark.kind == "start":
            found[mark.job].add(mark.host)
    return found


async def run_jobs(api: ApiClient, cluster: LocalCluster, count: int) -> dict[str, set[str]]:
    ids = [await api.submit(marks.job_command(0.6)) for _ in range(count)]
    done = await api.wait_all(ids, deadline=60)
    assert all(job["state"] == "SUCCEEDED" for job in done.values()), done
    return hosts_of(cluster, ids)


async def leader_sees(cluster: LocalCluster, job_id: str, node: str, text: str) -> None:
    """Until the leader's explain of job_id says `text` of node: it has seen the change."""

    async def says() -> bool:
        status, out = await schedctl(cluster, "explain", "--json", job_id)
        if status != 0:
            return False
        verdicts = {v["node"]: " ".join(v["reasons"]) for v in json.loads(out)["nodes"]}
        return text in verdicts.get(node, "")

    for _ in range(100):
        if await says():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the leader never said {text!r} of {node}")


async def test_a_cordoned_node_gets_no_job_across_its_restart_until_uncordoned(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        probe = await api.submit("true", labels={"nowhere": "yes"})  # stays PENDING
        status, out = await schedctl(cluster, "node", "cordon", "node1")
        assert (status, out) == (0, "node node1 cordoned\n")
        await leader_sees(cluster, probe, "node1", "cordoned by an operator")
        status, out = await schedctl(cluster, "nodes")
        assert status == 0 and "cordoned" in out.splitlines()[1], out
        # Six jobs of 0.6 s each, two CPUs free on each node: only node2 runs them.
        assert set().union(*(await run_jobs(api, cluster, 6)).values()) == {"node2"}
        # The cordon is not the node's record: it outlives the agent's restart.
        node1 = cluster.agents["node1"]
        node1.terminate()
        assert await asyncio.to_thread(node1.wait, 30) == 0
        node1.start()
        await asyncio.to_thread(cluster.wait_for_nodes, ["node1"])
        assert set().union(*(await run_jobs(api, cluster, 4)).values()) == {"node2"}
        status, out = await schedctl(cluster, "node", "uncordon", "node1")
        assert (status, out) == (0, "node node1 takes new jobs again\n")
        await leader_sees(cluster, probe, "node1", "no label nowhere")
        # Eight at once: node2's two CPUs cannot take them all, node1 takes some again.
        assert "node1" in set().union(*(await run_jobs(api, cluster, 8)).values())
        status, out = await schedctl(cluster, "node", "uncordon", "node1")
        assert status == EXIT_NOT_FOUND and "not cordoned" in out, out
        await api.call("cancel", id=probe)


async def test_drain_hands_a_running_job_back_after_the_deadline_and_it_finishes_elsewhere(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(marks.job_command(8.0))
        running = await api.wait_for(job_id, {"RUNNING"})
        victim = running["node"]
        other = ({"node1", "node2"} - {victim}).pop()
        status, out = await schedctl(cluster, "node", "drain", victim, "--deadline", "2s")
        assert status == 0 and f"node {victim} draining, jobs handed back at" in out, out
        done = await api.wait_for(job_id, deadline=60)
        assert done["state"] == "SUCCEEDED", done
        first, second = done["attempts"]
        assert (first["state"], first["reason"]) == ("handed back", "node drained by an operator")
        assert second["node"] == other
        # From the marks: attempt 1 began on the victim and never ended there; attempt 2
        # ran to its end on the other node. Attempt 1 beat every 0.2 s until killed: its
        # last beat came before attempt 2 began, so it was not alive through attempt 2
        # (the kill, its record and the new placement can take less than marks.PAD).
        files = {name: agent.dir / marks.FILE for name, agent in cluster.agents.items()}
        runs = marks.by_attempt(marks.read(files))
        first_run, second_run = runs[(job_id, 1)], runs[(job_id, 2)]
        assert (first_run.host, first_run.ended) == (victim, False)
        assert (second_run.host, second_run.ended) == (other, True)
        assert first_run.last < second_run.start
        assert second_run.start - first_run.start >= 2.0  # not before the deadline
        # The drained node's agent runs on, and takes no new job.
        assert cluster.agents[victim].running
        assert set().union(*(await run_jobs(api, cluster, 4)).values()) == {other}
        status, out = await schedctl(cluster, "nodes", "--json")
        cordon = {n["name"]: n["cordon"] for n in json.loads(out)["nodes"]}[victim]
        assert cordon["drain"] is True and cordon["by"], cordon


async def test_unsigned_node_actions_are_refused_where_jobs_must_be_signed(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    status, out = await schedctl(cluster, "node", "cordon", "node1", key=False)
    assert status == EXIT_ERROR and "node cordon is not signed" in out, out
    status, out = await schedctl(cluster, "nodes", "--json")
    assert json.loads(out)["nodes"][0]["cordon"] is None
    audit = cluster.agents["node1"].log_tail(50)
    assert "audit node-cordon node node1 key -: signature rejected" in audit, audit


async def test_explain_names_why_and_a_placed_jobs_node(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST, labels={"node2": {"gpu": "a"}})
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit("true", labels={"gpu": "b"}, cpus=3)
        status, out = await schedctl(cluster, "status", job_id)
        assert f"schedctl explain {job_id}" in out, out
        status, out = await schedctl(cluster, "explain", job_id)
        assert status == 0, out
        lines = out.splitlines()
        assert (
            lines[0] == f"job {job_id} PENDING: no node can take it now (each node's reasons below)"
        )
        node1 = next(line for line in lines if line.startswith("node1"))
        node2 = next(line for line in lines if line.startswith("node2"))
        assert "no label gpu; 2 of 2 CPUs free, the job asks 3" in node1, out
        assert "label gpu=a, the job asks gpu=b; 2 of 2 CPUs free, the job asks 3" in node2, out
        placed = await api.submit("sleep 5", node="node2")
        await api.wait_for(placed, {"RUNNING"})
        status, out = await schedctl(cluster, "explain", placed)
        assert status == 0 and "RUNNING on node2 (attempt 1): the only node it is pinned to" in out
        await api.call("cancel", id=job_id)


async def test_a_forgotten_node_is_no_longer_a_fleet_target_until_it_comes_back(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        status, out = await schedctl(cluster, "node", "forget", "node2")
        assert status == EXIT_ERROR and "node node2 is up" in out, (status, out)
        await asyncio.to_thread(cluster.agents["node2"].stop)
        await wait_until_not_listed(api, "node2")
        # Stopped, it is still known: a fleet run over --all names it unreachable.
        status, out = await schedctl(cluster, "run", "--all", "--cmd", "true", "--wait")
        assert status == EXIT_HOSTS_MISSED and "1 unreachable" in out, (status, out)
        status, out = await schedctl(cluster, "node", "forget", "node2")
        assert (status, out) == (0, "node node2 forgotten: fleet runs no longer name it\n")
        status, out = await schedctl(cluster, "run", "--all", "--cmd", "true", "--wait")
        assert status == 0 and out.startswith("1 succeeded\n"), (status, out)
        status, out = await schedctl(cluster, "node", "forget", "node2")
        assert status == EXIT_NOT_FOUND and "not known" in out, (status, out)
        # Back, it is known again.
        await asyncio.to_thread(cluster.agents["node2"].start)
        await asyncio.to_thread(cluster.wait_for_nodes, ["node2"])
        await asyncio.to_thread(cluster.agents["node2"].stop)
        await wait_until_not_listed(api, "node2")
        status, out = await schedctl(cluster, "run", "--all", "--cmd", "true", "--wait")
        assert status == EXIT_HOSTS_MISSED, (status, out)


async def wait_until_not_listed(api: ApiClient, node: str) -> None:
    for _ in range(150):
        if node not in {n["name"] for n in (await api.call("nodes"))["nodes"]}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{node} still listed")
