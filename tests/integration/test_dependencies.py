"""`after`: a child runs only once every parent SUCCEEDED, and never if one did not.

Judged from the marks the jobs write themselves: a child's start mark comes after
every parent's end mark, and a child that must not run leaves no mark at all.
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
from schedagent.ctl.exits import EXIT_ERROR
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster

TTL = 3
SCHEDCTL = str(Path(sys.executable).parent / "schedctl")
FAST = {"node_ttl": TTL, "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0}}


def gated(go: Path, ran: Path, status: int = 0) -> str:
    """A marked command that waits for the file `go`, then exits with status."""
    return marks.marked(f"while [ ! -e {go} ]; do sleep 0.05; done; exit {status}", ran)


async def settled(api: ApiClient) -> None:
    """Until a job submitted now has run: the leader has had passes since, so it has
    placed (or ended) whatever it was going to place for what came before."""
    probe = await api.submit("true")
    assert (await api.wait_for(probe))["state"] == "SUCCEEDED"


def runs_of(ran: Path) -> dict[str, marks.Run]:
    return {run.job: run for run in marks.runs(marks.read_file(ran))}


async def test_a_child_runs_after_both_parents_succeeded(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    ran, go_a, go_b = tmp_path / "marks", tmp_path / "go-a", tmp_path / "go-b"
    async with ApiClient(cluster.nats_url) as api:
        a = await api.submit(gated(go_a, ran))
        b = await api.submit(gated(go_b, ran))
        child = await api.submit(marks.marked("echo child", ran), after=[a, b])
        waiting = await api.call("get", id=child)
        assert waiting["job"]["state"] == "PENDING"
        assert waiting["pending_reason"].startswith("waiting for parent(s)"), waiting
        go_a.touch()
        assert (await api.wait_for(a))["state"] == "SUCCEEDED"
        await settled(api)  # a child placed after one parent would be running by now
        assert child not in runs_of(ran)
        go_b.touch()
        done = await api.wait_for(child)
    assert done["state"] == "SUCCEEDED", done
    runs = runs_of(ran)
    assert runs[a].ended and runs[b].ended and runs[child].ended
    assert runs[child].start > max(runs[a].last, runs[b].last), runs


async def test_a_failed_parent_ends_the_child_and_its_child_unrun(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    ran, go = tmp_path / "marks", tmp_path / "go"
    async with ApiClient(cluster.nats_url) as api:
        good = await api.submit("true")
        bad = await api.submit(gated(go, ran, status=3))
        child = await api.submit(marks.marked("echo child", ran), after=[good, bad])
        grandchild = await api.submit(marks.marked("echo grandchild", ran), after=[child])
        go.touch()
        ended = await api.wait_for(child)
        last = await api.wait_for(grandchild)
        late = await api.submit(marks.marked("echo late", ran), after=[bad])
        late_end = await api.wait_for(late)
        await settled(api)
    assert (ended["state"], ended["reason"], ended["attempts"]) == (
        "CANCELED",
        f"parent {bad} ended FAILED: not run",
        [],
    ), ended
    assert (last["state"], last["reason"]) == (
        "CANCELED",
        f"parent {child} ended CANCELED: not run",
    )
    assert (late_end["state"], late_end["attempts"]) == ("CANCELED", []), late_end
    assert set(runs_of(ran)) == {bad}  # no mark of any child, ever


async def test_an_unknown_parent_is_refused_at_submit(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        known = await api.submit("true")
        missing = "0" * 20
        spec = api.signed({"cmd": "echo never", "after": [known, missing]})
        reply = await api.raw("submit", json.dumps({"v": 1, "spec": spec}).encode())
        many = await api.raw(
            "submit_many",
            json.dumps({"v": 1, "specs": [spec, api.signed({"cmd": "true"})]}).encode(),
        )
        listed = await api.list_all()
    assert (reply["ok"], reply["code"]) == (False, "bad_request"), reply
    assert f"after: no job {missing}" in reply["error"]
    results = many["jobs"]
    assert f"after: no job {missing}" in results[0]["error"] and results[1].get("id"), many
    assert all("never" not in j["spec"]["cmd"] for j in listed)


async def test_a_leader_killed_while_children_wait_still_gives_their_outcome(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    ran, go = tmp_path / "marks", tmp_path / "go"
    async with ApiClient(cluster.nats_url) as api:
        leader = await api.leader_node(deadline=20)
        worker = next(name for name in cluster.agents if name != leader)
        good = await api.submit(gated(go, ran), node=worker)
        bad = await api.submit(gated(go, ran, status=1), node=worker)
        child = await api.submit(marks.marked("echo child", ran), after=[good])
        doomed = await api.submit(marks.marked("echo doomed", ran), after=[good, bad])
        await api.wait_for(good, {"RUNNING"})
        await api.wait_for(bad, {"RUNNING"})
        cluster.agents[leader].kill()
        # The parents end while nobody leads: the new leader learns of it from done/.
        go.touch()
        await api.leader_node(not_=leader, deadline=20)
        done = await api.wait_for(child)
        unrun = await api.wait_for(doomed)
        await settled(api)
    assert done["state"] == "SUCCEEDED", done
    assert (unrun["state"], unrun["reason"]) == ("CANCELED", f"parent {bad} ended FAILED: not run")
    runs = runs_of(ran)
    assert set(runs) == {good, bad, child}
    assert runs[child].start > runs[good].last


async def schedctl(cluster: LocalCluster, *args: str, stdin: str = "") -> tuple[int, str]:
    env = {
        **os.environ,
        "SCHEDCTL_NATS_URL": cluster.nats_url,
        "SCHEDCTL_KEY": str(cluster.key_path),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [SCHEDCTL, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


async def test_schedctl_submit_after_and_what_status_and_list_show(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    ran, go = tmp_path / "marks", tmp_path / "go"
    status, a = await schedctl(cluster, "submit", "--cmd", gated(go, ran))
    assert status == 0
    a = a.strip()
    status, b = await schedctl(cluster, "submit", "--cmd", "true", "--wait")
    b = b.strip().splitlines()[0]
    assert status == 0
    line = json.dumps({"cmd": marks.marked("echo from-file", ran), "after": [a]})
    status, from_file = await schedctl(cluster, "submit", "--file", "-", stdin=line + "\n")
    assert status == 0
    status, child = await schedctl(cluster, "submit", "--cmd", "echo child", "--after", f"{a},{b}")
    assert status == 0
    child = child.strip()
    status, shown = await schedctl(cluster, "status", child)
    assert status == 0
    assert f"after:     {a}, {b}\n" in shown, shown
    assert f"pending: waiting for parent(s) {a} (" in shown, shown
    assert b not in shown.split("pending:")[1]  # it SUCCEEDED: not waited for
    status, listed = await schedctl(cluster, "list")
    assert status == 0 and f"{a} +1" in listed, listed
    status, refused = await schedctl(cluster, "submit", "--cmd", "x", "--after", "0" * 20)
    assert status == EXIT_ERROR and f"after: no job {'0' * 20}" in refused, refused
    status, failed = await schedctl(cluster, "submit", "--cmd", "false", "--wait")
    assert status == 1
    status, _ = await schedctl(cluster, "submit", "--cmd", "x", "--after", failed.strip(), "--wait")
    assert status == 130  # CANCELED, unrun
    go.touch()
    status, _ = await schedctl(cluster, "submit", "--cmd", "true", "--after", child, "--wait")
    assert status == 0
    runs = runs_of(ran)
    assert runs[from_file.strip()].start > runs[a].last
