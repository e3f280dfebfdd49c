"""sd_notify sender, status line, reload merge and job environment, without a cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedagent.config import AgentConfig, parse_config
from schedagent.daemon.reload import merge_live
from schedagent.host.notify import Notifier
from schedagent.host.runner import job_environment
from schedagent.host.service import Heartbeat, Snapshot, status_line, watchdog_problem
from sdsockets import DatagramListener, parse_notify

Listener = DatagramListener[dict[str, str]]


@pytest.fixture(params=["abstract", "path"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    # sun_path holds 108 bytes: a short name, not pytest's long tmp_path, for the path case.
    name = f"sa-{uuid.uuid4().hex[:12]}"
    address = f"@{name}" if request.param == "abstract" else f"/tmp/{name}.sock"
    listen = DatagramListener(address, parse_notify)
    yield listen
    listen.close()
    if not address.startswith("@"):
        os.unlink(address)


def test_from_environ_takes_the_variables_out(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000", "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert env == {"PATH": "/bin"}  # as sd_notify's unset_environment: children never see them
    assert notifier.watchdog_interval == 0.5
    notifier.ready("follower")
    got = listener.wait_for(lambda m: "READY" in m, 5, "READY=1").body
    assert got == {"READY": "1", "STATUS": "follower"}
    notifier.close()


def test_reloading_carries_the_monotonic_clock(listener: Listener) -> None:
    notifier = Notifier(listener.address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    got = listener.wait_for(lambda m: "RELOADING" in m, 5, "RELOADING=1").body
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= after
    notifier.stopping("bye")
    assert listener.wait_for(lambda m: "STOPPING" in m, 5, "STOPPING=1").body["STATUS"] == "bye"
    notifier.close()


def test_watchdog_meant_for_another_pid_is_ignored() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environ(env).watchdog_interval is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "junk"}).watchdog_interval is None
    mine = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(mine).watchdog_interval == 1.5


def test_without_a_socket_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier(None).send("READY=1")
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.send("READY=1")  # logged once, never raised
    assert not gone.send("WATCHDOG=1")


async def test_heartbeat_pings_while_the_loop_runs(
    listener: Listener,
) -> None:
    heartbeat = Heartbeat(Notifier(listener.address, watchdog_usec=100_000))
    task = asyncio.create_task(heartbeat.watchdog())
    try:
        first = await asyncio.to_thread(listener.wait_for, lambda m: "WATCHDOG" in m, 5, "a ping")
        await asyncio.to_thread(
            listener.wait_for, lambda m: "WATCHDOG" in m, 5, "another ping", first.at + 1e-6
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_stuck_loop_leaves_its_stacks_before_the_watchdog_kills_it(tmp_path: Path) -> None:
    """A thread writes the loop's stack while the loop is stuck, unasked."""
    script = (
        "import asyncio, time\n"
        "from schedagent.host.notify import Notifier\n"
        "from schedagent.host.service import Heartbeat\n"
        "async def main():\n"
        "    beat = asyncio.create_task(Heartbeat(Notifier('@x', 200_000)).watchdog())\n"
        "    await asyncio.sleep(0.05)\n"
        "    time.sleep(1)  # the loop stuck in a blocking call\n"
        "    beat.cancel()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert "event loop stuck for 0." in done.stderr and "in main" in done.stderr, done.stderr
    assert done.stderr.count("event loop stuck") == 1  # once per stall


@pytest.mark.parametrize(
    ("watchdog", "ttl", "fits"),
    [(None, 3, True), (3.0, 10, True), (3.3, 10, True), (3.4, 10, False), (30.0, 10, False)],
)
def test_watchdog_must_kill_a_frozen_agent_before_its_jobs_are_retried(
    watchdog: float | None, ttl: int, fits: bool
) -> None:
    problem = watchdog_problem(watchdog, ttl)
    assert (problem is None) == fits
    if problem is not None:
        assert problem.startswith(f"WatchdogSec={watchdog:g}s ")
        assert f"node_ttl: {ttl}" in problem and "at most 3.30s" in problem
        # The remedy it names works.
        wanted = int(problem.split("node_ttl to at least ")[1].split()[0])
        assert watchdog_problem(watchdog, wanted) is None
        assert watchdog_problem(watchdog, wanted - 1) is not None


def test_status_line() -> None:
    assert status_line(Snapshot(True, "n1", 2)) == "leader, 2 jobs running"
    assert status_line(Snapshot(False, "n1", 1)) == "follower (leader n1), 1 job running"
    assert status_line(Snapshot(False, None, 0, problems=(None, "disconnected from NATS"))) == (
        "follower (leader not known yet), 0 jobs running; problem: disconnected from NATS"
    )
    assert status_line(Snapshot(True, "n1", 3, draining=True)).startswith("stopping: draining")


def test_merge_live_applies_live_keys_and_names_the_rest() -> None:
    old = parse_config({"node_name": "a", "labels": {"zone": "x"}})
    new = parse_config(
        {
            "node_name": "a",
            "labels": {"zone": "y"},
            "log_level": "debug",
            "output": {"tail_bytes": 10},
            "nats": {"urls": ["nats://10.0.0.1:4222"]},
        }
    )
    merged, applied, restart = merge_live(old, new)
    assert applied == ["labels", "log_level", "output.tail_bytes"]
    assert restart == ["nats.urls"]
    assert merged.labels == {"zone": "y"} and merged.output.tail_bytes == 10
    assert merged.nats == old.nats  # the running connection's value stays in effect
    assert merge_live(old, old) == (old, [], [])
    assert dataclasses.is_dataclass(merged) and isinstance(merged, AgentConfig)


def test_jobs_never_inherit_systemd_variables_or_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_only = {
        "NOTIFY_SOCKET": "@x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "1",
        "JOURNAL_STREAM": "8:9",
        "INVOCATION_ID": "abc",
        "CREDENTIALS_DIRECTORY": "/run/credentials/schedagent.service",
        "LISTEN_FDS": "1",
        "SCHEDAGENT_JOURNAL_SOCKET": "/tmp/j",
        "NATS_TOKEN": "secret",
        "ETCDCTL_PASSWORD": "secret",
    }
    for key, value in agent_only.items():
        monkeypatch.setenv(key, value)
    env = job_environment({"MINE": "1"}, {"SCHED_JOB_ID": "j"})
    assert not set(agent_only) & set(env)
    assert env["MINE"] == "1" and env["SCHED_JOB_ID"] == "j" and "PATH" in env
