"""Each attempt in its own cgroup (this machine lets root write one): what a job leaves
behind dies with it, its memory limit holds, its CPU quota holds; where cgroups are off,
jobs run in process groups and a limit is refused. Judged from the process table and
the cgroup filesystem, agents as separate OS processes on real etcd and nats-server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from apiclient import ApiClient
from helpers import live_processes_with, marker, wait_until
from schedagent.ctl.format import format_status
from schedagent.dev.cluster import LocalCluster
from schedagent.host.cgroups import parse_mountinfo, parse_proc_cgroup

FAST = {"jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 1.0}}
NO_CGROUPS = {**FAST, "containment": {"cgroups": False}}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to write cgroups")


def job_cgroup_dirs(proc_cgroup: str) -> list[Path]:
    """The directories a job's /proc/self/cgroup names that are its own (job-...)."""
    mounts = {m.key: m for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text())}
    dirs = []
    for key, path in parse_proc_cgroup(proc_cgroup).items():
        if "/job-" in path and key in mounts and mounts[key].root == "/":
            dirs.append(mounts[key].point / path.lstrip("/"))
    return dirs


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_for_file(path: Path) -> str:
    await wait_until(lambda: text(path).endswith("\n"), 20, str(path))
    return text(path)


def cpu_quotas(dirs: list[Path]) -> list[str]:
    """The CPU quota (microseconds per period) of each of the dirs that has one."""
    names = ("cpu.max", "cpu.cfs_quota_us")
    return [text(d / n).split()[0] for d in dirs for n in names if (d / n).exists()]


@pytest.mark.parametrize("end", ["exits", "canceled", "times out"])
async def test_a_daemon_that_escaped_its_session_dies_with_its_job(
    cluster_factory: Any, tmp_path: Path, end: str
) -> None:
    # Before cgroups: `setsid` put the daemon out of the job's process group and `env -i`
    # out of the reconciler's search by SCHED_JOB_ID: it outlived the job however it ended.
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    mark, cgroup_file, started = marker(), tmp_path / "cgroup", tmp_path / "started"
    daemon = f"sleep {mark}"
    then = {"exits": "sleep 0.5", "canceled": "sleep 600", "times out": "sleep 600"}[end]
    cmd = (
        f"setsid env -i sh -c 'echo $$ > {started}; exec {daemon}' </dev/null >/dev/null 2>&1 & "
        f"cat /proc/self/cgroup > {cgroup_file}.tmp && mv {cgroup_file}.tmp {cgroup_file}; "
        f"{then}"
    )
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(cmd, timeout=3 if end == "times out" else None)
        dirs = job_cgroup_dirs(await wait_for_file(cgroup_file))
        assert dirs, "the job ran in no cgroup of its own"
        await wait_for_file(started)  # it started (and may be dead already: the point)
        if end == "canceled":
            await api.call("cancel", id=job_id)
        job = await api.wait_for(job_id, deadline=30)
    expected = {"exits": "SUCCEEDED", "canceled": "CANCELED", "times out": "TIMED_OUT"}[end]
    assert job["state"] == expected, job
    await wait_until(lambda: not live_processes_with(daemon), 5, "the escaped daemon to die")
    await wait_until(lambda: not any(d.exists() for d in dirs), 5, f"{dirs} to be removed")


async def test_a_job_over_its_memory_limit_ends_failed_out_of_memory(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    cmd = "python3 -c 'data = b\"x\" * (256 << 20); print(len(data))'"
    async with ApiClient(cluster.nats_url) as api:
        over = await api.submit(cmd, memory=64 << 20)
        within = await api.submit(cmd, memory=512 << 20)
        job = await api.wait_for(over, deadline=30)
        fits = await api.wait_for(within, deadline=30)
    assert (job["state"], job["reason"]) == ("FAILED", "out of memory (limit 64M)"), job
    assert job["attempts"][0]["usage"]["memory_peak"] <= 64 << 20
    assert fits["state"] == "SUCCEEDED", fits
    assert fits["attempts"][0]["usage"]["memory_peak"] >= 256 << 20
    shown = format_status(job)  # what `schedctl status` prints
    assert "limits:    cpus 1, memory 64.0M" in shown
    assert "mem 64.0M" in shown and "out of memory (limit 64M)" in shown


async def test_half_a_cpu_is_a_quota_a_busy_loop_cannot_pass(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # Two busy loops on this 2-core machine: unlimited they could use up to 2 CPUs.
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    cgroup_file = tmp_path / "cgroup"
    loops = "timeout 4 sh -c 'while :; do :; done' & timeout 4 sh -c 'while :; do :; done'; wait"
    cmd = f"cat /proc/self/cgroup > {cgroup_file}.tmp && mv {cgroup_file}.tmp {cgroup_file}; "
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(cmd + loops, cpus=0.5)
        quotas = cpu_quotas(job_cgroup_dirs(await wait_for_file(cgroup_file)))
        job = await api.wait_for(job_id, deadline=30)
    assert quotas == ["50000"]  # of the 100 ms period
    assert job["state"] == "SUCCEEDED", job  # `wait` with no PID: 0
    attempt = job["attempts"][0]
    share = attempt["usage"]["cpu_seconds"] / (attempt["ended_at"] - attempt["started_at"])
    assert 0.05 < share <= 0.6, share


async def test_without_cgroups_jobs_run_in_process_groups_and_limits_are_refused(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(1, agent_overrides=NO_CGROUPS)
    mark, cgroup_file, ran = marker(), tmp_path / "cgroup", tmp_path / "ran"
    child = f"sleep {mark}"
    async with ApiClient(cluster.nats_url) as api:
        limited = await api.submit(f"touch {ran}", memory=64 << 20)
        tasks = await api.submit(f"touch {ran}", tasks=10)
        plain = await api.submit(f"{child} & cat /proc/self/cgroup > {cgroup_file}; exit 0")
        refused = await api.wait_for(limited, deadline=30)
        refused_tasks = await api.wait_for(tasks, deadline=30)
        job = await api.wait_for(plain, deadline=30)
    assert refused["state"] == "FAILED", refused
    assert refused["reason"] == (
        "cannot enforce --memory (no writable memory controller) on this node"
    )
    assert refused_tasks["reason"] == (
        "cannot enforce --tasks (no writable pids controller) on this node"
    )
    assert not ran.exists(), "a job whose limit cannot be enforced ran anyway"
    assert job["state"] == "SUCCEEDED", job
    assert job_cgroup_dirs(cgroup_file.read_text()) == []
    assert job["attempts"][0].get("usage") is None  # nothing to read it from
    # Its process group still goes when it ends.
    await wait_until(lambda: not live_processes_with(child), 5, "the job's child to die")


@pytest.mark.parametrize("closed_first", [False, True])
async def test_a_restarted_agent_removes_what_its_killed_incarnation_left(
    cluster_factory: Any, tmp_path: Path, closed_first: bool
) -> None:
    # Outside systemd a SIGKILLed agent leaves its jobs running. The next incarnation
    # kills their cgroups: while the attempt is still RUNNING under the old lease, and
    # (closed_first) after the leader recorded it lost. Before: the env -i daemon lived
    # on, and the cgroup directories stayed.
    cluster: LocalCluster = cluster_factory(2, agent_overrides={**FAST, "node_ttl": 4})
    mark, cgroup_file, started = marker(), tmp_path / "cgroup", tmp_path / "started"
    daemon = f"sleep {mark}"
    cmd = (
        f"setsid env -i sh -c 'echo $$ > {started}; exec {daemon}' </dev/null >/dev/null 2>&1 & "
        f"cat /proc/self/cgroup > {cgroup_file}.tmp && mv {cgroup_file}.tmp {cgroup_file}; "
        "sleep 600"
    )
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(cmd)
        dirs = job_cgroup_dirs(await wait_for_file(cgroup_file))
        await wait_for_file(started)
        agent = cluster.agents[(await api.get(job_id))["node"]]
        agent.kill()
        if closed_first:
            job = await api.wait_for(job_id, deadline=40)
            assert job["reason"] == "node lost", job
        assert live_processes_with(daemon) and all(d.exists() for d in dirs)
        agent.start()
        await wait_until(lambda: not live_processes_with(daemon), 30, "the daemon to die")
        await wait_until(lambda: not any(d.exists() for d in dirs), 5, f"{dirs} to be removed")
