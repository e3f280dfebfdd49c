"""`schedagent dev` end to end: the banner, schedctl against it, and a clean Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from schedagent.host.capacity import usable_cpus

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")


@dataclasses.dataclass
class Dev:
    proc: subprocess.Popen[str]
    url: str
    agent_pids: list[int]


@pytest.fixture(scope="module")
def dev() -> Iterator[Dev]:
    """A running `schedagent dev --agents 3`, read from its banner."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "schedagent", "dev", "--agents", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield _read_banner(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _read_banner(proc: subprocess.Popen[str]) -> Dev:
    assert proc.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + 60
    while not any("submit" in line for line in banner):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            raise AssertionError("dev cluster did not come up:\n" + "".join(banner))
        banner.append(line)
    text = "".join(banner)
    url = re.search(r"^\s+nats\s+(nats://\S+)", text, re.M)
    pids = [int(p) for p in re.findall(r"^\s+node\d+\s+pid (\d+)", text, re.M)]
    assert url is not None and len(pids) == 3, text
    return Dev(proc, url.group(1), pids)


def schedctl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCHEDCTL_NATS_URL": url}
    return subprocess.run([SCHEDCTL, *args], capture_output=True, text=True, timeout=60, env=env)


def test_submit_wait_prints_output_and_exits_zero(dev: Dev) -> None:
    result = schedctl(dev.url, "submit", "--cmd", "echo hello", "--wait")
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr


def test_submit_wait_exits_with_the_jobs_exit_code(dev: Dev) -> None:
    result = schedctl(dev.url, "submit", "--cmd", "exit 7", "--wait")
    assert result.returncode == 7, result.stderr


def test_nodes_lists_three_nodes_with_this_machines_cpus(dev: Dev) -> None:
    result = schedctl(dev.url, "nodes", "--json")
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)["nodes"]
    assert sorted(n["name"] for n in nodes) == ["node1", "node2", "node3"]
    assert all(n["cpus"] == usable_cpus() for n in nodes)
    table = schedctl(dev.url, "nodes")
    assert table.returncode == 0 and all(f"node{i}" in table.stdout for i in (1, 2, 3))


def test_status_and_list_find_a_job(dev: Dev) -> None:
    submitted = schedctl(dev.url, "submit", "--cmd", "echo listed", "--wait")
    assert submitted.returncode == 0
    listed = schedctl(dev.url, "list", "--json", "--limit", "5")
    jobs = json.loads(listed.stdout)["jobs"]
    job = next(j for j in jobs if j["spec"]["cmd"] == "echo listed")
    status = schedctl(dev.url, "status", job["id"])
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout


def test_cancel_signs_with_the_dev_key_and_kills_the_job(dev: Dev) -> None:
    submitted = schedctl(dev.url, "submit", "--cmd", "sleep 300", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job"]["id"]
    cancelled = schedctl(dev.url, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr

    def state() -> str:
        status = schedctl(dev.url, "status", job_id, "--json")
        return str(json.loads(status.stdout)["job"]["state"])

    deadline = time.monotonic() + 30
    while (last := state()) != "CANCELED" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last == "CANCELED"


def test_unknown_job_is_one_line_and_non_zero(dev: Dev) -> None:
    result = schedctl(dev.url, "status", "0" * 20)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_zz_sigterm_stops_everything(dev: Dev) -> None:
    """Named to run last in this module: SIGTERM stops the cluster and leaves no agent."""
    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(60) == 0
    for pid in dev.agent_pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
