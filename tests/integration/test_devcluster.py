"""Tests of the local cluster harness itself: real servers, a stand-in agent."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aetcd
import nats
import psutil
import pytest

from schedagent.config import load_config
from schedagent.dev.cluster import AgentProcess, LocalCluster
from schedagent.dev.procs import (
    EtcdServer,
    HarnessError,
    ManagedProcess,
    NatsServer,
    free_port,
    pick_port,
    port_is_free,
    wait_for,
)
from schedagent.errors import ConfigError

ClusterFactory = Callable[..., LocalCluster]

# Registers its node key the way the real agent's registry does (minus the lease),
# so LocalCluster can be tested without the agent. Label fake_exit=N exits with N.
FAKE_AGENT = """
import base64, json, signal, sys, urllib.request, yaml
cfg = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
print("fake agent", cfg["node_name"], "starting", flush=True)
if "fake_exit" in cfg["labels"]:
    sys.exit(int(cfg["labels"]["fake_exit"]))
key = (cfg["etcd"]["prefix"] + "/nodes/" + cfg["node_name"]).encode()
body = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(b"{}").decode()}
req = urllib.request.Request(cfg["etcd"]["endpoints"][0] + "/v3/kv/put", json.dumps(body).encode())
urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5).read()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"""


@pytest.fixture
def fake_agent(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    return [sys.executable, str(script)]


def gone(pid: int, created: float) -> bool:
    """True once pid is no longer the process that had this create time."""
    try:
        return psutil.Process(pid).create_time() != created
    except psutil.NoSuchProcess:
        return True


def snapshot(procs: list[ManagedProcess]) -> list[tuple[int, float]]:
    pids = [p.pid for p in procs]
    assert all(pid is not None for pid in pids)
    return [(pid, psutil.Process(pid).create_time()) for pid in pids if pid is not None]


def test_pick_port_prefers_a_free_default_and_falls_back() -> None:
    port = free_port()
    assert port_is_free(port)
    assert pick_port(port) == port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        other = pick_port(port)
    assert other != port
    assert len({free_port() for _ in range(50)}) == 50


async def test_etcd_put_get_and_kill_restart_keeps_data(etcd_server: EtcdServer) -> None:
    client = aetcd.Client(etcd_server.host, etcd_server.port)
    try:
        await client.put(b"/t/key", b"value")
        got = await client.get(b"/t/key")
        assert got is not None and got.value == b"value"
    finally:
        await client.close()

    old_pid, port, data_dir = etcd_server.pid, etcd_server.port, etcd_server.data_dir
    assert etcd_server.kill() == -signal.SIGKILL
    assert not etcd_server.running and not etcd_server.exited_unexpectedly
    etcd_server.restart()
    assert etcd_server.running and etcd_server.pid != old_pid
    assert (etcd_server.port, etcd_server.data_dir) == (port, data_dir)

    client = aetcd.Client(etcd_server.host, etcd_server.port)
    try:
        got = await client.get(b"/t/key")
        assert got is not None and got.value == b"value"
    finally:
        await client.close()
    assert "start #2" in etcd_server.log_path.read_text()


async def test_etcd_keys_lists_exactly_a_prefix(etcd_server: EtcdServer) -> None:
    client = aetcd.Client(etcd_server.host, etcd_server.port)
    try:
        for key in (b"/p/nodes/a", b"/p/nodes/b", b"/p/nodesx", b"/p/node"):
            await client.put(key, b"{}")
    finally:
        await client.close()
    assert sorted(etcd_server.keys("/p/nodes/")) == ["/p/nodes/a", "/p/nodes/b"]
    assert etcd_server.keys("/q/") == []


async def test_nats_jetstream_publish_and_restart(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.one", b"1")
        assert (ack.stream, ack.seq) == ("T", 1)
    finally:
        await nc.close()

    port = nats_server.port
    nats_server.restart()
    assert nats_server.port == port

    nc = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info("T")
        assert info.state.messages == 1  # the file store survived the restart
        ack = await js.publish("t.two", b"2")
        assert ack.seq == 2
    finally:
        await nc.close()

    assert nats_server.kill() == -signal.SIGKILL
    nats_server.restart()
    nc = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info("T")
        assert info.state.messages == 2  # acked writes survive a SIGKILL too
    finally:
        await nc.close()


def test_stop_leaves_no_child_running(tmp_path: Path) -> None:
    servers: list[ManagedProcess] = [EtcdServer(tmp_path / "etcd"), NatsServer(tmp_path / "nats")]
    try:
        for server in servers:
            server.start()
        before = snapshot(servers)
        # Graceful exits look odd: etcd 3.4 re-raises SIGTERM on itself after its
        # shutdown (-15) and nats-server 2.9 exits 1 after its own.
        assert [s.stop() for s in servers] == [-signal.SIGTERM, 1]
        assert "closed etcd server" in servers[0].log_tail(5)
        assert "Server Exiting" in servers[1].log_tail(5)
    finally:
        for server in servers:
            server.kill()
    assert all(gone(pid, created) for pid, created in before)
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert not children & {pid for pid, _ in before}


def test_server_start_failure_reports_log_and_kills_child(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "a") as first:
        clash = NatsServer(tmp_path / "b", port=first.port)
        with pytest.raises(HarnessError, match="nats exited with code") as info:
            clash.start()
        assert "address already in use" in str(info.value)
        assert not clash.running


def test_with_stops_the_process_even_when_the_block_raises(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    with pytest.raises(RuntimeError, match="inside the block"), proc as entered:
        assert entered is proc and proc.running
        raise RuntimeError("inside the block")
    assert proc.returncode == -signal.SIGTERM


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\nwhile True: time.sleep(1)"
    proc = ManagedProcess("stubborn", [sys.executable, "-c", code], tmp_path / "s.log")
    proc.start()
    wait_for(lambda: proc.log_tail(1) == "ready", 10, "the child to ignore SIGTERM")
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_pause_resume_and_stop_while_paused(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    proc.start()
    assert proc.pid is not None
    ps = psutil.Process(proc.pid)
    proc.pause()
    wait_for(lambda: ps.status() == psutil.STATUS_STOPPED, 5, "SIGSTOP")
    proc.resume()
    wait_for(lambda: ps.status() != psutil.STATUS_STOPPED, 5, "SIGCONT")
    proc.pause()
    wait_for(lambda: ps.status() == psutil.STATUS_STOPPED, 5, "SIGSTOP")
    assert proc.stop(timeout=5) == -signal.SIGTERM  # SIGCONT follows SIGTERM
    with pytest.raises(HarnessError, match="not running"):
        proc.pause()


def test_agent_config_uses_the_agent_schema(tmp_path: Path) -> None:
    agent = AgentProcess(
        "n1",
        tmp_path / "n1",
        etcd_endpoint="http://127.0.0.1:1234",
        nats_url="nats://127.0.0.1:5678",
        etcd_prefix="/x",
        overrides={"cpus": 2, "labels": {"zone": "a"}, "jobs": {"kill_grace": 1}},
    )
    config = load_config(agent.write_config())
    assert (config.node_name, config.cpus, dict(config.labels)) == ("n1", 2.0, {"zone": "a"})
    assert config.etcd.endpoints == ("http://127.0.0.1:1234",) and config.etcd.prefix == "/x"
    assert config.nats.urls == ("nats://127.0.0.1:5678",)
    assert config.jobs.kill_grace == 1 and config.jobs.retry_backoff == 1.0
    assert agent.argv[-3:] == ["run", "--config", str(agent.config_path)]

    bad = AgentProcess("n2", tmp_path / "n2", etcd_endpoint="x", nats_url="nats://h:1")
    with pytest.raises(ConfigError, match=r"etcd\.endpoints"):
        bad.start()
    assert bad.pid is None


def test_cluster_starts_registers_adds_and_stops(
    cluster_factory: ClusterFactory, fake_agent: list[str]
) -> None:
    cluster = cluster_factory(2, agent_command=fake_agent, labels={"node2": {"zone": "b"}})
    assert sorted(cluster.etcd.keys("/schedagent/nodes/")) == [
        "/schedagent/nodes/node1",
        "/schedagent/nodes/node2",
    ]
    assert load_config(cluster.agents["node2"].config_path).labels == {"zone": "b"}
    assert cluster.etcd_endpoint.startswith("http://127.0.0.1:")
    assert cluster.nats_url.startswith("nats://127.0.0.1:")

    cluster.add_agent("extra", cpus=3)
    assert "/schedagent/nodes/extra" in cluster.etcd.keys("/schedagent/nodes/")
    cluster.agents["node1"].kill()
    assert cluster.dead() == []  # killed on purpose
    cluster.agents["node2"].pause()
    cluster.agents["node2"].resume()

    before = snapshot([cluster.etcd, cluster.nats, cluster.agents["extra"]])
    cluster.stop()
    assert all(gone(pid, created) for pid, created in before)
    assert cluster.base_dir.is_dir()  # a caller's base_dir is never removed


def test_cluster_start_fails_fast_and_cleans_up(
    cluster_factory: ClusterFactory, fake_agent: list[str]
) -> None:
    started = time.monotonic()
    with pytest.raises(HarnessError, match="node2 exited with code 3") as info:
        cluster_factory(2, agent_command=fake_agent, labels={"node2": {"fake_exit": "3"}})
    assert time.monotonic() - started < 20
    assert "fake agent node2 starting" in str(info.value)  # the log tail is in the error


def test_cluster_notices_unexpected_death(
    cluster_factory: ClusterFactory, fake_agent: list[str]
) -> None:
    cluster = cluster_factory(1, agent_command=fake_agent)
    pid = cluster.agents["node1"].pid
    assert pid is not None
    psutil.Process(pid).kill()
    wait_for(lambda: bool(cluster.dead()), 5, "the harness to notice")
    assert cluster.dead() == [cluster.agents["node1"]]


async def test_async_context_manager(tmp_path: Path, fake_agent: list[str]) -> None:
    async with LocalCluster(1, base_dir=tmp_path, agent_command=fake_agent) as cluster:
        client = aetcd.Client(cluster.etcd.host, cluster.etcd.port)
        try:
            assert await client.get(b"/schedagent/nodes/node1") is not None
        finally:
            await client.close()
    assert not any(p.running for p in cluster.processes())


def test_own_temp_dir_is_removed_after_a_clean_stop(fake_agent: list[str]) -> None:
    with LocalCluster(1, agent_command=fake_agent) as cluster:
        assert cluster.base_dir.is_dir()
    assert not cluster.base_dir.exists()


def test_run_dev_banner_death_notice_and_sigterm(tmp_path: Path, fake_agent: list[str]) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    code = "import sys; from schedagent.dev.command import run_dev\n"
    code += (
        f"sys.exit(run_dev(2, base_dir={str(tmp_path / 'dev')!r}, agent_command={fake_agent!r}))"
    )
    with socket.socket() as busy:
        # Hold 4222 (if free) so the banner must explain the non-default NATS URL.
        if port_is_free(4222):
            busy.bind(("127.0.0.1", 4222))
            busy.listen()
        with out.open("wb") as o, err.open("wb") as e:
            dev = subprocess.Popen([sys.executable, "-c", code], stdout=o, stderr=e)
        try:
            wait_for(lambda: "schedctl submit" in out.read_text(), 60, "the banner")
        finally:
            if dev.poll() is not None:
                pytest.fail(f"run_dev exited {dev.returncode}: {err.read_text()}")
    banner = out.read_text()
    assert "export SCHEDCTL_NATS_URL=nats://127.0.0.1:" in banner
    assert 'schedctl submit --cmd "echo hello" --wait' in banner
    children = psutil.Process(dev.pid).children()
    assert len(children) == 4  # etcd, nats, two agents
    victim = next(c for c in children if "node1" in " ".join(c.cmdline()))
    victim.kill()
    wait_for(lambda: "node1 (pid" in err.read_text(), 10, "the death notice")
    assert dev.poll() is None  # an agent's death does not end the dev cluster

    dev.send_signal(signal.SIGTERM)
    assert dev.wait(30) == 0
    assert all(gone(c.pid, c.create_time()) for c in children)
