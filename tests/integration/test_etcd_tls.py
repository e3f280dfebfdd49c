"""etcd over TLS with client certificates: a real etcd that demands them; an agent with
the right ones runs jobs, and clients without them, with another CA's, or checking
another name are refused; bad TLS settings stop the agent at start."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs import make_ca, make_cert
from schedagent.config import EtcdConfig, parse_config
from schedagent.dev.cluster import AgentProcess, harness_key
from schedagent.dev.procs import ETCD_BIN, ManagedProcess, NatsServer, free_port, wait_for
from schedagent.errors import ConfigError, StoreUnavailableError
from schedagent.etcd.store import Put, Store
from schedagent.etcd.tls import EtcdTls, load_etcd_tls

BIN = Path(sys.executable).parent
SERVER_NAME = "etcd.test"  # in the server certificate, next to IP:127.0.0.1


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: Path
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path


class TlsEtcd(ManagedProcess):
    """A single etcd member that talks only TLS and wants a client certificate."""

    def __init__(self, directory: Path, certs: Certs) -> None:
        self.port, peer_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{peer_port}"
        argv = [ETCD_BIN, "--name", "tls", "--data-dir", str(directory / "data")]
        argv += ["--listen-client-urls", self.url, "--advertise-client-urls", self.url]
        argv += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
        argv += ["--initial-cluster", f"tls={peer}", "--client-cert-auth"]
        argv += ["--cert-file", str(certs.server_cert), "--key-file", str(certs.server_key)]
        argv += ["--trusted-ca-file", str(certs.ca)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        super().__init__("etcd-tls", argv, directory / "etcd.log", env=env)
        self.context = ssl.create_default_context(cafile=str(certs.ca))
        self.context.load_cert_chain(str(certs.client_cert), str(certs.client_key))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", context=self.context, timeout=2) as r:
                return str(json.load(r).get("health")).lower() == "true"
        except OSError:
            return False


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    directory = tmp_path / "certs"
    directory.mkdir()
    ca = make_ca(directory, "ca")
    server_cert, server_key = make_cert(
        directory, ca, "server", ["IP:127.0.0.1", f"DNS:{SERVER_NAME}"]
    )
    client_cert, client_key = make_cert(directory, ca, "agent", ["DNS:agent"])
    return Certs(ca, client_cert, client_key, server_cert, server_key)


@pytest.fixture
def tls_etcd(tmp_path: Path, certs: Certs) -> Iterator[TlsEtcd]:
    if not os.access(ETCD_BIN, os.X_OK):
        pytest.fail(f"{ETCD_BIN} is not installed; run scripts/setup", pytrace=False)
    with TlsEtcd(tmp_path / "etcd", certs) as server:
        try:
            wait_for(server.healthy, 20, "etcd with TLS")
            yield server
        finally:
            if server.exited_unexpectedly:
                sys.stderr.write(server.log_tail())


def tls_settings(certs: Certs) -> dict[str, str]:
    return {
        "tls_ca": str(certs.ca),
        "tls_cert": str(certs.client_cert),
        "tls_key": str(certs.client_key),
    }


def schedctl(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDCTL_")}
    env.update(SCHEDCTL_KEY=str(harness_key()[1]), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    argv = [str(BIN / "schedctl"), "--nats", nats_url, "--timeout", "5", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_an_agent_with_a_client_certificate_runs_jobs(
    tls_etcd: TlsEtcd, certs: Certs, nats_server: NatsServer, tmp_path: Path
) -> None:
    agent = AgentProcess(
        "etcdtls1",
        tmp_path / "agent",
        etcd_endpoint=tls_etcd.url,
        nats_url=nats_server.url,
        overrides={"etcd": tls_settings(certs)},
    )
    try:
        with agent:
            wait_for(
                lambda: "etcdtls1" in schedctl(nats_server.url, "nodes").stdout,
                30,
                "the agent to register in etcd over TLS",
                0.2,
            )
            result = schedctl(nats_server.url, "submit", "--cmd", "echo over etcd tls", "--wait")
            assert (result.returncode, result.stdout) == (0, "over etcd tls\n"), result.stderr
    finally:
        if agent.returncode not in (0, None):
            sys.stderr.write(agent.log_tail())


def _store(url: str, tls: EtcdTls | None) -> Store:
    return Store([url], timeout=2.0, tls=tls)


async def _works(store: Store) -> bool:
    try:
        await store.connect()
        return await store.txn([], [Put("/probe", b"x")])
    except StoreUnavailableError:
        return False
    finally:
        await store.close()


async def test_etcd_refuses_clients_without_a_trusted_certificate(
    tls_etcd: TlsEtcd, certs: Certs, tmp_path: Path
) -> None:
    config = EtcdConfig(endpoints=(tls_etcd.url,), **tls_settings(certs))
    good = load_etcd_tls(config, "test")
    assert good is not None and good.server_name == "127.0.0.1"
    assert await _works(_store(tls_etcd.url, good))  # the control: the right certificates

    # Plain gRPC to a TLS port.
    assert not await _works(_store(tls_etcd.url.replace("https", "http"), None))
    # TLS, but no client certificate: etcd wants one.
    assert not await _works(_store(tls_etcd.url, dataclasses.replace(good, cert=None, key=None)))
    # A client certificate from another CA.
    other = tmp_path / "other"
    other.mkdir()
    other_ca = make_ca(other, "other")
    cert, key = make_cert(other, other_ca, "intruder", ["DNS:intruder"])
    forged = dataclasses.replace(good, cert=cert.read_bytes(), key=key.read_bytes())
    assert not await _works(_store(tls_etcd.url, forged))
    # A server the agent does not trust: another CA, or a name not in its certificate.
    assert not await _works(
        _store(tls_etcd.url, dataclasses.replace(good, ca=other_ca.read_bytes()))
    )
    assert not await _works(
        _store(tls_etcd.url, dataclasses.replace(good, server_name="other.test"))
    )
    # The name every member carries, whatever address the endpoint names.
    assert await _works(_store(tls_etcd.url, dataclasses.replace(good, server_name=SERVER_NAME)))


def test_tls_settings_must_fit_together() -> None:
    def problem(etcd: dict[str, object]) -> str:
        with pytest.raises(ConfigError) as caught:
            parse_config({"etcd": etcd}, "agent.yaml")
        return str(caught.value)

    mixed = ["https://a:2379", "http://b:2379"]
    assert problem({"endpoints": mixed}) == (
        "agent.yaml: etcd.endpoints: mixes http:// and https:// endpoints; use one scheme for all"
    )
    assert problem({"endpoints": ["https://a:2379"], "tls_cert": "/c.pem"}) == (
        "agent.yaml: etcd.tls_key: set etcd.tls_cert and etcd.tls_key together (or neither)"
    )
    assert problem({"tls_ca": "/ca.pem"}) == (
        "agent.yaml: etcd.tls_ca: is set, but etcd.endpoints are http://; "
        "TLS needs https:// endpoints"
    )
    assert "is not a host name" in problem({"tls_server_name": "a b"})
    https = parse_config({"etcd": {"endpoints": ["https://a:2379"], "tls_server_name": "x.y"}})
    assert https.etcd.tls_server_name == "x.y"


def test_unreadable_or_mismatched_files_stop_the_agent_at_start(
    certs: Certs, tmp_path: Path
) -> None:
    other_cert, _ = make_cert(certs.ca.parent, certs.ca, "other", ["DNS:other"])
    cases = {
        "etcd.tls_ca: cannot read": {"tls_ca": str(tmp_path / "missing.pem")},
        "etcd.tls_cert: is not a PEM certificate": {
            **tls_settings(certs),
            "tls_cert": str(certs.client_key),
        },
        f"etcd.tls_key: {certs.client_key} is not the key of {other_cert}": {
            **tls_settings(certs),
            "tls_cert": str(other_cert),
        },
    }
    for expected, settings in cases.items():
        config = tmp_path / "agent.yaml"
        etcd = {"endpoints": ["https://127.0.0.1:1"], **settings}
        config.write_text(json.dumps({"etcd": etcd}))
        result = subprocess.run(
            [str(BIN / "schedagent"), "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert f"{config}: {expected}" in result.stderr, result.stderr
