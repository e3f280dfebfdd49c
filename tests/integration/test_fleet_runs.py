"""Fleet runs on a real 3-agent cluster: every host, the failure budget, canaries.

Evidence of what ran is each part's own marks, written into its agent's directory
(tests/fleethelp.py), never the records alone: a host that was skipped has no marks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from fleethelp import fail_on, group_id_of, part_cmd, results, schedctl, starts, status
from helpers import wait_until
from schedagent.dev.cluster import LocalCluster

HOSTS = ["node1", "node2", "node3"]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(3, base_dir=tmp_path_factory.mktemp("fleet")) as local:
        yield local


async def test_all_runs_on_every_host_with_per_host_output_and_results(
    cluster: LocalCluster,
) -> None:
    cmd = part_cmd('echo "hello from $(basename "$PWD")"; echo "oops" >&2')
    done = await asyncio.to_thread(schedctl, cluster, "run", "--all", "--cmd", cmd, "--wait")
    assert done.returncode == 0, (done.stdout, done.stderr)
    for host in HOSTS:
        assert f"{host}: hello from {host}" in done.stdout.splitlines()
        assert f"{host}: oops" in done.stderr.splitlines()
    assert done.stdout.splitlines()[-1] == "3 succeeded"
    ran = starts(cluster)
    assert {h: len(r) for h, r in ran.items()} == {h: 1 for h in HOSTS}
    group_id = group_id_of(done)
    shown = status(cluster, group_id)
    assert shown["group"]["done"] is True and shown["counts"] == {"succeeded": 3}
    rows = {row["host"]: row for row in shown["hosts"]}
    for host in HOSTS:
        assert rows[host]["exit_code"] == 0 and rows[host]["state"] == "SUCCEEDED"
        assert rows[host]["job"] == ran[host][0].job  # its own marks name its part
    table = await asyncio.to_thread(schedctl, cluster, "status", group_id)
    assert "node2" in table.stdout and "3 succeeded" in table.stdout, table.stdout


async def test_max_parallel_one_stops_at_the_first_failure(cluster: LocalCluster) -> None:
    fail_on(cluster, "node2")
    args = ["run", "--all", "--max-parallel", "1", "--cmd", part_cmd("sleep 0.3"), "--wait"]
    done = await asyncio.to_thread(schedctl, cluster, *args)
    assert done.returncode == 6, (done.stdout, done.stderr)
    assert done.stdout.splitlines()[-1] == "1 succeeded, 1 failed, 1 skipped"
    group_id = group_id_of(done)
    assert results(cluster, group_id) == {
        "node1": "succeeded",
        "node2": "failed",
        "node3": "skipped",
    }
    ran = starts(cluster)
    assert ran["node3"] == [], "a host after the failure started"
    first, second = ran["node1"][0], ran["node2"][0]
    assert first.ended and second.start > first.last, "not one host at a time"


async def test_a_failing_canary_starts_nothing_else(cluster: LocalCluster) -> None:
    fail_on(cluster, "node1")
    args = ["run", "--all", "--canary", "1", "--cmd", part_cmd(), "--wait", "--json"]
    done = await asyncio.to_thread(schedctl, cluster, *args)
    assert done.returncode == 6, (done.stdout, done.stderr)
    final = json.loads(done.stdout)
    assert final["counts"] == {"failed": 1, "skipped": 2}
    reasons = {row["host"]: row.get("reason") or "" for row in final["hosts"]}
    assert "canary node1" in reasons["node2"] and "canary node1" in reasons["node3"]
    ran = starts(cluster)
    assert len(ran["node1"]) == 1 and ran["node2"] == [] and ran["node3"] == []


async def test_bad_arguments_are_usage_errors(cluster: LocalCluster) -> None:
    for args, why in (
        (["run", "--cmd", "true"], "give one of --all"),
        (["run", "--all", "--nodes", "a", "--cmd", "true"], "give one of --all"),
        (["run", "--all", "--node", "node1", "--cmd", "true"], "--nodes"),
        (["run", "--all", "--max-parallel", "0", "--cmd", "true"], "number of hosts"),
        (["run", "--all", "--max-failures", "120%", "--cmd", "true"], "share"),
        (["status", "g-nothex"], "not a fleet run id"),
    ):
        done = await asyncio.to_thread(schedctl, cluster, *args)
        assert done.returncode == 2 and why in done.stderr, (args, done.stderr)
    missing = await asyncio.to_thread(schedctl, cluster, "status", "g-" + "0" * 20)
    assert missing.returncode == 4, missing.stderr


async def test_cancel_group_kills_the_running_part_and_skips_the_rest(
    cluster: LocalCluster,
) -> None:
    args = ["run", "--all", "--max-parallel", "1", "--cmd", part_cmd("sleep 30")]
    made = await asyncio.to_thread(schedctl, cluster, *args)
    assert made.returncode == 0, made.stderr
    group_id = made.stdout.strip()
    await wait_until(lambda: bool(starts(cluster)["node1"]), 20, "node1 started")
    canceled = await asyncio.to_thread(schedctl, cluster, "cancel", group_id)
    assert canceled.returncode == 0, canceled.stderr
    end = time.monotonic() + 30
    while not status(cluster, group_id)["group"]["done"]:
        assert time.monotonic() < end, "the canceled run did not end"
        await asyncio.sleep(0.5)
    assert results(cluster, group_id) == {
        "node1": "canceled",
        "node2": "skipped",
        "node3": "skipped",
    }
    ran = starts(cluster)
    assert not ran["node1"][0].ended, "the running part was not killed"
    assert ran["node2"] == [] and ran["node3"] == []
