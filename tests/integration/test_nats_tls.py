"""NATS over TLS: a real nats-server with certificates made by openssl, as the nats role
makes them; an agent and schedctl that trust the CA connect and run a signed job, and
clients that do not trust it are refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs import make_ca, make_cert
from schedagent.ctl.exits import EXIT_NO_CLUSTER
from schedagent.dev.cluster import AgentProcess, harness_key
from schedagent.dev.procs import NATS_BIN, EtcdServer, ManagedProcess, free_port, wait_for

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")


class TlsNats(ManagedProcess):
    def __init__(self, directory: Path, cert: Path, key: Path) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "nats.conf"
        config.write_text(
            f'host: "127.0.0.1"\nport: {self.port}\n'
            f'jetstream {{ store_dir: "{directory / "store"}" }}\n'
            f'tls {{ cert_file: "{cert}"\n key_file: "{key}"\n timeout: 2 }}\n'
        )
        super().__init__("nats", [NATS_BIN, "-c", str(config)], directory / "nats.log")

    def started(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return b'"tls_required":true' in sock.recv(4096)
        except OSError:
            return False


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[TlsNats, Path]]:
    if not os.access(NATS_BIN, os.X_OK):
        pytest.fail(f"{NATS_BIN} is not installed; run scripts/setup", pytrace=False)
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = make_ca(certs, "ca")
    cert, key = make_cert(certs, ca, "server", ["IP:127.0.0.1"])
    with TlsNats(tmp_path / "nats", cert, key) as server:
        try:
            wait_for(server.started, 20, "nats-server with TLS")
            yield server, ca
        finally:
            if server.exited_unexpectedly:
                sys.stderr.write(server.log_tail())


def schedctl(port: int, *args: str, ca: Path | None = None, scheme: str = "nats") -> str | int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDCTL_")}
    env.update(SCHEDCTL_KEY=str(harness_key()[1]), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    if ca is not None:
        env["SCHEDCTL_NATS_CA"] = str(ca)
    result = subprocess.run(
        [SCHEDCTL, "--nats", f"{scheme}://127.0.0.1:{port}", "--timeout", "5", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout if result.returncode == 0 else f"{result.returncode}: {result.stderr}"


@pytest.mark.slow
def test_agent_and_schedctl_talk_tls_with_the_ca(
    tls_nats: tuple[TlsNats, Path], etcd_server: EtcdServer, tmp_path: Path
) -> None:
    server, ca = tls_nats
    agent = AgentProcess(
        "tls1",
        tmp_path / "agent",
        etcd_endpoint=etcd_server.url,
        nats_url=f"nats://127.0.0.1:{server.port}",
        overrides={"nats": {"tls_ca": str(ca)}},
    )
    try:
        with agent:
            wait_for(
                lambda: "/schedagent/nodes/tls1" in etcd_server.keys("/schedagent/nodes/"),
                30,
                "the agent to register over TLS",
                0.1,
            )
            out = schedctl(server.port, "submit", "--cmd", "echo over tls", "--wait", ca=ca)
            assert out == "over tls\n"
            # tls:// with the CA works the same.
            assert "tls1" in str(schedctl(server.port, "nodes", ca=ca, scheme="tls"))
    finally:
        if agent.returncode not in (0, None):
            sys.stderr.write(agent.log_tail())


NO_CLUSTER = f"{EXIT_NO_CLUSTER}: "  # how schedctl() shows a failure: "CODE: stderr"


@pytest.mark.slow
def test_clients_without_the_ca_are_refused(tls_nats: tuple[TlsNats, Path], tmp_path: Path) -> None:
    server, _ = tls_nats
    # No CA: the system's CAs do not vouch for this server.
    out = schedctl(server.port, "nodes", scheme="tls")
    assert str(out).startswith(NO_CLUSTER) and "CERTIFICATE_VERIFY_FAILED" in str(out), out
    # Another CA: refused as well.
    other = tmp_path / "other"
    other.mkdir()
    out = schedctl(server.port, "nodes", ca=make_ca(other, "other"))
    assert str(out).startswith(NO_CLUSTER) and "CERTIFICATE_VERIFY_FAILED" in str(out), out
    # A CA file that is not there: one clear line.
    out = schedctl(server.port, "nodes", ca=tmp_path / "missing.pem")
    assert str(out).startswith(f"{NO_CLUSTER}schedctl: cannot load the NATS CA certificate"), out


def test_an_agent_with_a_missing_ca_says_so_while_it_waits(
    tls_nats: tuple[TlsNats, Path], etcd_server: EtcdServer, tmp_path: Path
) -> None:
    server, _ = tls_nats
    agent = AgentProcess(
        "tls2",
        tmp_path / "agent",
        etcd_endpoint=etcd_server.url,
        nats_url=f"nats://127.0.0.1:{server.port}",
        overrides={"nats": {"tls_ca": str(tmp_path / "missing.pem")}},
    )
    with agent:
        wait_for(
            lambda: "cannot load the NATS CA certificate" in agent.log_tail(),
            20,
            "the agent to report the missing CA",
        )
        assert agent.running
