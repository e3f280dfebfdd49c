"""Listing fleet runs (fleet_list, `schedctl runs`) on a real 2-agent cluster.

Three runs end three ways; the list must give them newest first, page through them,
and count each the way the hosts' own marks and exit statuses say it went (each part
writes its status into its agent's directory), never only as the records say.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

import etcdhttp
from apiclient import ApiClient
from fleethelp import group_id_of, part_cmd, schedctl, signed_group, starts
from schedagent.core import wire
from schedagent.core.fleet import MAX_TARGETS, part_job_id
from schedagent.ctl.exits import EXIT_ERROR, EXIT_USAGE
from schedagent.daemon.api import answer
from schedagent.daemon.fleetlist import READ_BUDGET
from schedagent.dev.cluster import LocalCluster

STATUS = "fleet-status"  # each part appends `JOB STATUS` here, in its agent's directory
# Fails on node2 by itself (its working directory is its agent's).
FAILS_ON_NODE2 = '[ "$(basename "$PWD")" != node2 ]'


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(2, base_dir=tmp_path_factory.mktemp("fleetlist")) as local:
        yield local


def with_status(body: str) -> str:
    """A part that marks itself and records its own exit status."""
    return part_cmd(f'{body}\nrc=$?; echo "$SCHED_JOB_ID $rc" >> {STATUS}; exit $rc')


def own_counts(cluster: LocalCluster, group_id: str, hosts: list[str]) -> dict[str, int]:
    """A run's counts from the hosts themselves: a status written is a success or a
    failure; a target that ran nothing (no marks) was not reached."""
    ran = {run.job for runs in starts(cluster).values() for run in runs if run.ended}
    statuses: dict[str, int] = {}
    for agent in cluster.agents.values():
        path = agent.dir / STATUS
        for line in path.read_text().splitlines() if path.exists() else []:
            job, rc = line.split()
            statuses[job] = int(rc)
    counts: dict[str, int] = {}
    for host in hosts:
        job = part_job_id(group_id, host)
        result = "unreachable"
        if job in ran:
            result = "succeeded" if statuses[job] == 0 else "failed"
        counts[result] = counts.get(result, 0) + 1
    return counts


async def start_runs(cluster: LocalCluster) -> list[tuple[str, list[str]]]:
    """Three ended runs, oldest first: all succeed; one host fails; one is unreachable."""
    made = []
    for args, status, hosts in (
        (["--all", "--cmd", with_status("true")], 0, ["node1", "node2"]),
        (["--all", "--cmd", with_status(FAILS_ON_NODE2)], 6, ["node1", "node2"]),
        (["--nodes", "node1,ghost", "--cmd", with_status("true")], 7, ["ghost", "node1"]),
    ):
        done = await asyncio.to_thread(schedctl, cluster, "run", *args, "--wait")
        assert done.returncode == status, (args, done.stdout, done.stderr)
        made.append((group_id_of(done), hosts))
    return made


async def test_runs_are_listed_newest_first_paged_and_counted_as_the_hosts_ran_them(
    cluster: LocalCluster, api: ApiClient
) -> None:
    made = await start_runs(cluster)
    newest_first = [group for group, _ in reversed(made)]
    listed = json.loads((await asyncio.to_thread(schedctl, cluster, "runs", "--json")).stdout)
    runs = listed["runs"]
    assert [r["id"] for r in runs] == newest_first
    for entry, (group_id, hosts) in zip(runs, reversed(made), strict=True):
        assert entry["state"] == "ended" and entry["targets"] == len(hosts), entry
        assert entry["counts"] == own_counts(cluster, group_id, hosts), entry
        assert "hosts" not in entry, "a summary, not the per-host table"
    assert runs[0]["counts"] == {"succeeded": 1, "unreachable": 1}
    assert runs[1]["counts"] == {"succeeded": 1, "failed": 1}

    # One a page: each reply's `next` is where the next one starts; none after the last.
    paged: list[str] = []
    before = None
    while True:
        reply = await api.call("fleet_list", limit=1, before=before)
        paged += [r["id"] for r in reply["runs"]]
        before = reply["next"]
        if before is None:
            break
        assert before == paged[-1]
    assert paged == newest_first
    two = await api.call("fleet_list", limit=2)
    assert [r["id"] for r in two["runs"]] == newest_first[:2] and two["next"] == newest_first[1]

    table = await asyncio.to_thread(schedctl, cluster, "runs", "--limit", "2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["GROUP", "ACCEPTED", "STATE"] and len(lines) == 3, lines
    assert lines[1].startswith(newest_first[0]) and "1 succeeded, 1 unreachable" in lines[1]
    assert lines[2].startswith(newest_first[1]) and "1 succeeded, 1 failed" in lines[2]


async def test_a_run_rolling_out_is_listed_without_reading_its_parts(
    cluster: LocalCluster, api: ApiClient
) -> None:
    args = ["run", "--all", "--max-parallel", "1", "--cmd", part_cmd("sleep 30")]
    made = await asyncio.to_thread(schedctl, cluster, *args)
    assert made.returncode == 0, made.stderr
    group_id = made.stdout.strip()
    # A record under groups/ that is no group is skipped, not an error.
    junk = f"{cluster.etcd_prefix}/groups/g-{'f' * 20}"
    etcdhttp.put(cluster.etcd_endpoint, junk, b"not a group")
    (entry,) = (await api.call("fleet_list"))["runs"]
    assert (entry["id"], entry["state"], entry["counts"]) == (group_id, "rolling out", None)
    canceled = await asyncio.to_thread(schedctl, cluster, "cancel", group_id)
    assert canceled.returncode == 0, canceled.stderr
    (entry,) = (await api.call("fleet_list"))["runs"]
    assert entry["state"] == "canceled", entry
    table = await asyncio.to_thread(schedctl, cluster, "runs")
    assert group_id in table.stdout and "canceled" in table.stdout, table.stdout


async def test_bad_arguments_and_an_older_agent_are_one_clear_line(
    cluster: LocalCluster, api: ApiClient
) -> None:
    for body in ({"limit": 0}, {"limit": 501}, {"limit": "9"}, {"before": "nope"}):
        reply = await api.raw("fleet_list", json.dumps({"v": 1, **body}).encode())
        assert reply["ok"] is False and reply["code"] == "bad_request", (body, reply)
        assert next(iter(body)) in reply["error"], reply
    for bad in ("0", "-1", "x"):
        done = await asyncio.to_thread(schedctl, cluster, "runs", "--limit", bad)
        assert done.returncode == EXIT_USAGE and "--limit" in done.stderr, done.stderr
    empty = await asyncio.to_thread(schedctl, cluster, "runs")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no fleet runs"), empty.stderr

    # An agent from before the verb answers as daemon/api.py always has: unknown verb.
    async def nodes(req: dict[str, Any]) -> dict[str, Any]:
        return {"nodes": []}

    async def older_agent(msg: Any) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        await msg.respond(wire.reply(await answer({"nodes": nodes}, verb, msg.data)))

    sub = await api.nc.subscribe("old.api.*", cb=older_agent)
    try:
        done = await asyncio.to_thread(schedctl, cluster, "--prefix", "old", "runs")
    finally:
        await sub.unsubscribe()
    assert done.returncode == EXIT_ERROR, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()
    assert "older than this schedctl" in line and "cannot list fleet runs" in line, line


async def test_many_runs_over_hours_page_through_in_order_each_once(
    cluster: LocalCluster, api: ApiClient
) -> None:
    # Ended runs written as records (their parts are not the point here), spread over
    # two hours and bunched within seconds, so pages cross etcd reads of 16 records
    # and the windows etcd/newest.py widens and narrows.
    now = time.time()
    stamps = [now - 7200 + 300 * n for n in range(20)] + [now - 30 + 0.01 * n for n in range(25)]
    written = []
    for stamp in stamps:
        made = signed_group("true", {"all": True}, ["node1", "node2"], accepted_at=stamp)
        ended = dataclasses.replace(made, done=True, counts={"succeeded": 2})
        key = f"{cluster.etcd_prefix}/groups/{ended.id}"
        etcdhttp.put(cluster.etcd_endpoint, key, ended.to_json())
        written.append(ended.id)
    expected = sorted(written, reverse=True)
    for limit in (7, 16, 500):
        paged: list[str] = []
        before = None
        while True:
            reply = await api.call("fleet_list", limit=limit, before=before)
            assert len(reply["runs"]) <= limit
            paged += [r["id"] for r in reply["runs"]]
            if reply["next"] is None:
                break
            before = reply["next"]
        assert paged == expected, limit
    listed = await asyncio.to_thread(schedctl, cluster, "runs", "--limit", "40", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == expected[:40]


async def test_large_runs_are_listed_over_several_replies_each_read_bounded(
    cluster: LocalCluster, api: ApiClient
) -> None:
    # 48 runs of 10,000 targets (~200 KiB a record, ~10 MiB in all): one request reads
    # at most READ_BUDGET of records, then hands on with `next`; the agents meanwhile
    # keep their leases (each record's decode is apart from the next).
    hosts = [f"host{n:05}" for n in range(MAX_TARGETS)]
    now = time.time()
    written = []
    for n in range(48):
        made = signed_group("true", {"all": True}, hosts, accepted_at=now - 100 + n)
        ended = dataclasses.replace(made, done=True, counts={"unreachable": len(hosts)})
        etcdhttp.put(
            cluster.etcd_endpoint, f"{cluster.etcd_prefix}/groups/{ended.id}", ended.to_json()
        )
        written.append(ended.id)
    size = len(ended.to_json())

    async def leases() -> dict[str, int]:
        return {n["name"]: n["lease"] for n in (await api.call("nodes"))["nodes"]}

    before_listing = await leases()
    first = await api.call("fleet_list", limit=500)
    assert 0 < len(first["runs"]) <= READ_BUDGET // size < 48, len(first["runs"])
    assert first["runs"][0]["targets"] == MAX_TARGETS and first["next"] is not None
    listed = await asyncio.to_thread(schedctl, cluster, "runs", "--limit", "100", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == written[::-1]
    assert await leases() == before_listing, "an agent lost its lease while listing"
