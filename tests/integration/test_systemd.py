"""The agent under a stand-in for systemd: READY, STATUS, WATCHDOG, STOPPING and reload."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import select
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from apiclient import ApiClient
from schedagent.dev.cluster import AgentProcess
from schedagent.dev.procs import EtcdServer, NatsServer
from sdsockets import DatagramListener, parse_notify

Notify = DatagramListener[dict[str, str]]
NODE_KEY = "/schedagent/nodes/node1"


@pytest.fixture
def notify() -> Iterator[Notify]:
    """systemd's side of NOTIFY_SOCKET: an abstract datagram socket."""
    listener = DatagramListener(f"@schedagent-test-{uuid.uuid4().hex}", parse_notify)
    yield listener
    listener.close()


def make_agent(
    tmp_path: Path, etcd: EtcdServer, nats_server: NatsServer, notify: Notify, **env: str
) -> AgentProcess:
    return AgentProcess(
        "node1",
        tmp_path / "node1",
        etcd_endpoint=etcd.url,
        nats_url=nats_server.url,
        env={"NOTIFY_SOCKET": notify.address, **env},
    )


def has(key: str, value: str | None = None) -> Any:
    return lambda m: key in m and (value is None or m[key] == value)


def is_ping(m: dict[str, str]) -> bool:
    return "WATCHDOG" in m


def test_ready_only_once_registered_and_stopping_on_sigterm(
    tmp_path: Path, etcd_server: EtcdServer, nats_server: NatsServer, notify: Notify
) -> None:
    etcd_server.stop()  # the agent starts while etcd is down
    with make_agent(tmp_path, etcd_server, nats_server, notify) as agent:
        waiting = notify.wait_for(
            lambda m: m.get("STATUS", "").startswith(f"waiting for etcd at {etcd_server.url}: "),
            30,
            "STATUS saying the agent waits for etcd",
        )
        assert "refused" in waiting.body["STATUS"].lower()
        assert not [m for m in notify.messages() if "READY" in m.body]
        etcd_server.start()
        ready = notify.wait_for(has("READY", "1"), 30, "READY=1 after etcd came up")
        # Registration comes before READY, so the key exists now that READY did.
        assert NODE_KEY in etcd_server.keys("/schedagent/nodes/")
        assert "jobs running" in ready.body["STATUS"]
        notify.wait_for(has("STATUS", "leader, 0 jobs running"), 10, "STATUS as leader")
        agent.terminate()
        stopping = notify.wait_for(has("STOPPING", "1"), 10, "STOPPING=1")
        assert stopping.body["STATUS"].startswith("stopping: draining 0 running job")
        assert agent.wait(20) == 0
        assert "stopped: 0 finished, 0 handed back" in agent.log_tail(5)


async def test_watchdog_cadence_goes_on_without_nats_and_jobs_see_none_of_it(
    tmp_path: Path, etcd_server: EtcdServer, nats_server: NatsServer, notify: Notify
) -> None:
    agent = make_agent(
        tmp_path,
        etcd_server,
        nats_server,
        notify,
        WATCHDOG_USEC="1000000",
        JOURNAL_STREAM="1:2",
        CREDENTIALS_DIRECTORY="/run/credentials/schedagent.service",
    )
    with agent:
        ready = notify.wait_for(has("READY", "1"), 30, "READY=1")
        pings = _pings_after(notify, ready.at, count=6)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # Half of WATCHDOG_USEC apart, and never as late as the timeout itself.
        assert 0.4 < statistics.median(gaps) < 0.65 and max(gaps) < 0.9, gaps
        async with ApiClient(nats_server.url) as api:
            job = await api.wait_for(await api.submit("env"))
        leaked = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY"}
        names = {line.split("=", 1)[0] for line in job["output_tail"].splitlines()}
        assert "PATH" in names and not names & leaked

        # NATS away: the loop still runs, so systemd must not kill the agent (and with
        # it every job of the unit); STATUS= says what is wrong.
        nats_server.stop()
        gone = time.monotonic()
        said = notify.wait_for(lambda m: "problem: " in m.get("STATUS", ""), 10, "STATUS: why")
        assert "NATS" in said.body["STATUS"]
        during = _pings_after(notify, gone, count=8)
        assert max(b - a for a, b in itertools.pairwise([gone, *during])) < 0.9, during
        nats_server.start()


def test_a_watchdog_too_long_for_the_lease_ttl_is_refused_at_start(
    tmp_path: Path, etcd_server: EtcdServer, nats_server: NatsServer, notify: Notify
) -> None:
    """systemd would kill a frozen agent's jobs only after they run elsewhere."""
    agent = make_agent(tmp_path, etcd_server, nats_server, notify, WATCHDOG_USEC="30000000")
    with agent:
        assert agent.wait(20) == 2
        last = agent.log_tail(1)
        assert "WatchdogSec=30s" in last and "node_ttl: 10" in last, last
        assert "at most 3.30s" in last and "node_ttl to at least 64" in last, last
        assert NODE_KEY not in etcd_server.keys("/schedagent/nodes/")
        assert not [m for m in notify.messages() if "READY" in m.body]


def _pings_after(notify: Notify, since: float, count: int) -> list[float]:
    deadline = time.monotonic() + 20
    while True:
        pings = [m.at for m in notify.messages() if m.at >= since and is_ping(m.body)]
        if len(pings) >= count:
            return pings[:count]
        assert time.monotonic() < deadline, f"only {len(pings)} pings in 20s"
        time.sleep(0.05)


def test_no_pings_while_the_event_loop_is_blocked(
    tmp_path: Path, etcd_server: EtcdServer, nats_server: NatsServer, notify: Notify
) -> None:
    """A real stall, no test hook: the agent's stderr is a pipe nobody reads (a stuck
    journald does this to services); once it fills, logging blocks the event loop."""
    agent = make_agent(tmp_path, etcd_server, nats_server, notify, WATCHDOG_USEC="1000000")
    agent.write_config()
    with _stderr_pipe() as (stderr, reading):
        proc = subprocess.Popen(
            agent.argv,
            env=agent.env,
            cwd=agent.dir,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
        os.close(stderr)
        try:
            ready = notify.wait_for(has("READY", "1"), 30, "READY=1")
            notify.wait_for(is_ping, 10, "a first ping", after=ready.at)
            reading.clear()
            asyncio.run(_bad_requests(nats_server.url, 300))
            notify.wait_for_silence(is_ping, quiet=3, timeout=20, what="pings")
            assert proc.poll() is None  # stuck, not dead
            freed = time.monotonic()
            reading.set()
            notify.wait_for(is_ping, 15, "pings after the loop is free", after=freed)
        finally:
            reading.set()
            proc.terminate()
            assert proc.wait(30) == 0


async def _bad_requests(url: str, count: int) -> None:
    """Requests the agent logs one line each for ("bad nosuchverb request")."""
    nc = await nats.connect(url)
    for _ in range(count):
        await nc.publish("sched.api.nosuchverb", b"{}")
    await nc.flush()
    await nc.close()


@contextlib.contextmanager
def _stderr_pipe() -> Iterator[tuple[int, threading.Event]]:
    """A one-page pipe, read (and discarded) only while the event is set."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    reading, done = threading.Event(), threading.Event()
    reading.set()

    def drain() -> None:
        while not done.is_set():
            ready = reading.wait(0.1) and select.select([read_end], [], [], 0.1)[0]
            if ready and not os.read(read_end, 65536):
                return

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield write_end, reading
    finally:
        done.set()
        thread.join(5)
        os.close(read_end)


async def test_sighup_reloads_live_keys_and_keeps_the_old_config_when_invalid(
    tmp_path: Path, etcd_server: EtcdServer, nats_server: NatsServer, notify: Notify
) -> None:
    with make_agent(tmp_path, etcd_server, nats_server, notify) as agent:
        first = notify.wait_for(has("READY", "1"), 30, "READY=1")
        agent.config["labels"] = {"zone": "b"}
        agent.config["nats"]["prefix"] = "other"  # baked into subscriptions: needs a restart
        agent.write_config()
        sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert agent.pid is not None
        os.kill(agent.pid, signal.SIGHUP)
        reloading = notify.wait_for(has("RELOADING", "1"), 10, "RELOADING=1", first.at)
        assert int(reloading.body["MONOTONIC_USEC"]) >= sent
        notify.wait_for(has("READY", "1"), 10, "READY=1 after the reload", reloading.at)
        async with ApiClient(nats_server.url) as api:
            nodes = (await api.call("nodes"))["nodes"]
            assert nodes[0]["labels"] == {"zone": "b"}
            assert "nats.prefix changed; these take effect after a restart" in agent.log_tail(10)

            (tmp_path / "node1" / "agent.yaml").write_text("labels: [not, a, mapping]\n")
            os.kill(agent.pid, signal.SIGHUP)
            bad = notify.wait_for(has("RELOADING"), 10, "second RELOADING", reloading.at + 1e-6)
            after_bad = notify.wait_for(has("READY", "1"), 10, "READY=1 after it", bad.at)
            assert "reload failed" in after_bad.body["STATUS"]
            assert "labels: must be a mapping" in after_bad.body["STATUS"]
            assert (await api.call("nodes"))["nodes"][0]["labels"] == {"zone": "b"}
            job = await api.wait_for(await api.submit("echo still serving"))
            assert job["state"] == "SUCCEEDED"

        agent.write_config()
        os.kill(agent.pid, signal.SIGHUP)
        fixed = notify.wait_for(has("RELOADING"), 10, "third RELOADING", after_bad.at)
        good = notify.wait_for(has("READY", "1"), 10, "READY=1 after the fix", fixed.at)
        assert "reload failed" not in good.body["STATUS"]
