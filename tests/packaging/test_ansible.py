"""The Ansible roles' files, rendered by ansible-playbook for three local hosts, work.

`ansible/tests/render.yml` runs each role's real preflight and renders its templates
for an inventory of three local hosts (every service on 127.0.0.1, each on ports of its
own), with Debian 12's ansible-core (/usr/bin, the supported control host) and with
the one ansible-lint brings (.venv). Then: every agent.yaml passes `schedagent
check-config` and every NATS config `nats-server -t`; a second run changes nothing and
keeps the generated passwords; and etcd, NATS, agents and schedctl started from the
rendered files form a working, password-protected cluster.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
import yaml

from schedagent.config import parse_config
from schedagent.core.signing import SigningKey, key_id, parse_public, public_text, verify
from schedagent.ctl.contexts import Context, load_config
from schedagent.ctl.exits import EXIT_NO_CLUSTER
from schedagent.daemon.reload import merge_live
from schedagent.dev.procs import ETCD_BIN, NATS_BIN, ManagedProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
RENDER_PLAYBOOK = ANSIBLE_DIR / "tests" / "render.yml"
SCHEDCTL = str(Path(sys.executable).parent / "schedctl")
PLAYBOOK_BINS = {
    "debian": "/usr/bin/ansible-playbook",
    "venv": str(Path(sys.executable).parent / "ansible-playbook"),
}
HOSTS = ("n1", "n2", "n3")
ETCDCTL_BIN = "/usr/bin/etcdctl"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass
class Render:
    """One run of render.yml: where its files are and how to run it again."""

    binary: str
    base: Path
    inventory: Path
    out: Path
    ports: dict[str, dict[str, int]]

    def file(self, host: str, name: str) -> Path:
        return self.out / host / name

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return _run_playbook(self.binary, self.base, self.inventory, self.out, *extra)

    def credential(self, name: str) -> str:
        return (self.credentials / name).read_text().split()[0]

    @property
    def credentials(self) -> Path:
        """Where the roles keep the generated passwords: beside the inventory."""
        return self.inventory.parent / "credentials"


def _run_playbook(
    binary: str, base: Path, inventory: Path, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(base / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(base / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        # The venv's ansible-playbook finds its own interpreter first on PATH.
        "PATH": f"{Path(binary).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    argv = [binary, "-i", str(inventory), str(RENDER_PLAYBOOK), "-e", f"render_dir={out}"]
    return subprocess.run(
        [*argv, *extra], cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=240
    )


def _inventory(base: Path) -> tuple[dict[str, object], dict[str, dict[str, int]]]:
    kinds = ("etcd_client_port", "etcd_peer_port", "nats_client_port", "nats_cluster_port")
    ports = {host: {kind: free_port() for kind in (*kinds, "nats_monitor_port")} for host in HOSTS}
    hosts = {
        host: {
            **ports[host],
            "etcd_data_dir": str(base / "state" / host / "etcd"),
            "nats_store_dir": str(base / "state" / host / "nats"),
            # Three agents on one machine: each its own metrics port (the default,
            # 127.0.0.1:9464, only one of them could listen on).
            "schedagent_config_extra": {
                "jobs": {"drain_timeout": 5},
                "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            },
        }
        for host in HOSTS
    }
    members = {"hosts": {host: {} for host in HOSTS}}
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "schedagent_deb": str(base / "schedagent_0.1.0_amd64.deb"),
                "etcd_address": "127.0.0.1",
                "nats_address": "127.0.0.1",
                "schedagent_labels": {"zone": "a"},
                # The role's default job user is the package's schedjob, which only the
                # .deb creates: these agents run from the checkout, so jobs run as nobody.
                "schedagent_job_user": "nobody",
            },
            "hosts": hosts,
            "children": {
                "etcd": members,
                "nats": members,
                "agents": members,
                "admin": {"hosts": {"n1": {}}},
            },
        }
    }
    return inventory, ports


# Existing clusters, given as endpoints: no etcd and no nats group in the inventory.
EXISTING = {
    "schedagent_etcd_endpoints": ["http://192.0.2.5:2379", "http://192.0.2.6:2379"],
    "schedagent_nats_urls": ["nats://192.0.2.8:4222"],
    "schedctl_nats_urls": ["nats://192.0.2.8:4222"],
    "schedagent_nats_user": "",
    "schedctl_nats_user": "",
}


def _render(binary: str, base: Path, existing: bool = False, extra: tuple[str, ...] = ()) -> Render:
    if not os.access(binary, os.X_OK):
        # Fail, not skip: scripts/setup installs both.
        pytest.fail(f"{binary} is not installed; run scripts/setup", pytrace=False)
    base.mkdir(parents=True, exist_ok=True)
    (base / "schedagent_0.1.0_amd64.deb").write_bytes(b"")
    inventory, ports = _inventory(base)
    if existing:
        groups = inventory["all"]["children"]  # type: ignore[index]
        del groups["etcd"], groups["nats"]
        inventory["all"]["vars"].update(EXISTING)  # type: ignore[index]
    inventory_path = base / "inventory" / "hosts.yml"
    inventory_path.parent.mkdir(exist_ok=True)
    inventory_path.write_text(yaml.safe_dump(inventory), "utf-8")
    out = base / "out"
    result = _run_playbook(binary, base, inventory_path, out, *extra)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return Render(binary, base, inventory_path, out, ports)


@pytest.fixture(scope="module")
def debian_render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    """render.yml's output with Debian's ansible-playbook (the one the docs use)."""
    return _render(PLAYBOOK_BINS["debian"], tmp_path_factory.mktemp("ansible-debian"))


@pytest.fixture(scope="module", params=sorted(PLAYBOOK_BINS))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """render.yml's output for three local hosts, with each ansible-playbook."""
    if request.param == "debian":
        render: Render = request.getfixturevalue("debian_render")
        return render
    binary = PLAYBOOK_BINS[request.param]
    return _render(binary, tmp_path_factory.mktemp(f"ansible-{request.param}"))


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


def test_every_agent_yaml_passes_check_config(rendered: Render) -> None:
    for host in HOSTS:
        path = rendered.file(host, "agent.yaml")
        check = subprocess.run(
            [sys.executable, "-m", "schedagent", "check-config", str(path)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
        assert f"OK (node {host})" in check.stdout


def test_agent_yaml_carries_the_inventory(rendered: Render) -> None:
    config = yaml.safe_load(rendered.file("n2", "agent.yaml").read_text())
    password = rendered.credential("nats-schedagent")
    assert config["node_name"] == "n2"
    assert config["labels"] == {"zone": "a"}
    assert config["jobs"] == {"drain_timeout": 5}
    ports = rendered.ports
    assert config["etcd"]["endpoints"] == [
        f"https://127.0.0.1:{ports[h]['etcd_client_port']}" for h in HOSTS
    ]
    # etcd over TLS with a client certificate of the agent's own (render.yml copied the
    # files here; the role: /etc/schedagent/tls/), every member checked against the
    # cluster's shared name.
    tls = rendered.file("n2", "agent-tls")
    assert {k: v for k, v in config["etcd"].items() if k.startswith("tls_")} == {
        "tls_ca": f"{tls}/etcd-ca.pem",
        "tls_cert": f"{tls}/etcd-client.pem",
        "tls_key": f"{tls}/etcd-client.key",
        "tls_server_name": "etcd.schedagent.internal",
    }
    assert (tls / "etcd-client.pem").read_bytes() == (
        rendered.credentials / "tls" / "n2-etcd-client.pem"
    ).read_bytes()
    assert config["nats"]["urls"] == [
        f"tls://schedagent:{password}@127.0.0.1:{ports[h]['nats_client_port']}" for h in HOSTS
    ]
    # The NATS CA, where render.yml copied it (the role: /etc/schedagent/tls/nats-ca.pem).
    assert config["nats"]["tls_ca"] == str(rendered.file("n2", "agent-tls/nats-ca.pem"))
    assert (
        Path(config["nats"]["tls_ca"]).read_bytes()
        == (rendered.credentials / "nats-ca.pem").read_bytes()
    )
    assert rendered.file("n2", "agent.yaml").read_text().startswith("#\n# Ansible managed")


def test_every_nats_config_passes_nats_server_t(rendered: Render) -> None:
    for host in HOSTS:
        check = subprocess.run(
            [NATS_BIN, "-t", "-c", str(rendered.file(host, "nats-server.conf"))],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        text = rendered.file(host, "nats-server.conf").read_text()
        others = [h for h in HOSTS if h != host]
        routes = re.findall(r"nats-route://route:\w+@127\.0\.0\.1:(\d+)", text)
        assert routes == [str(rendered.ports[h]["nats_cluster_port"]) for h in others]
        # TLS for clients and for routes, with the host's certificate from the cluster's CA.
        tls_dir = rendered.file(host, "nats-tls")
        assert text.count(f'cert_file: "{tls_dir}/server.pem"') == 2, text
        assert text.count(f'ca_file: "{tls_dir}/ca.pem"') == 1, text


def _cert_text(path: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_each_nats_server_gets_a_certificate_of_its_own_from_the_cluster_ca(
    rendered: Render,
) -> None:
    ca = rendered.credentials / "nats-ca.pem"
    assert "CA:TRUE" in _cert_text(ca)
    assert (rendered.credentials / "nats-ca.key").stat().st_mode & 0o077 == 0
    serials = set()
    for host in HOSTS:
        cert = rendered.credentials / "tls" / f"{host}-nats.pem"
        key = rendered.credentials / "tls" / f"{host}-nats.key"
        assert key.stat().st_mode & 0o077 == 0, oct(key.stat().st_mode)
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        text = _cert_text(cert)
        assert f"DNS:{host}, IP Address:127.0.0.1" in text, text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text, text
        assert "CA:FALSE" in text, text
        serials.add(re.search(r"Serial Number:\s*(\S+)", text, re.S).group(1))  # type: ignore[union-attr]
        # The server's copy is the one issued.
        assert rendered.file(host, "nats-tls/server.pem").read_bytes() == cert.read_bytes()
    assert len(serials) == len(HOSTS)


def test_etcd_settings_name_every_member(rendered: Render) -> None:
    env = _env_file(rendered.file("n3", "etcd.env"))
    peers = [f"{h}=https://127.0.0.1:{rendered.ports[h]['etcd_peer_port']}" for h in HOSTS]
    assert env["ETCD_NAME"] == "n3"
    assert env["ETCD_INITIAL_CLUSTER"] == ",".join(peers)
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    # TLS for clients and peers, each required to show a certificate from the CA.
    port = rendered.ports["n3"]
    assert env["ETCD_LISTEN_CLIENT_URLS"] == f"https://127.0.0.1:{port['etcd_client_port']}"
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"https://127.0.0.1:{port['etcd_client_port']}"
    assert env["ETCD_LISTEN_PEER_URLS"] == f"https://127.0.0.1:{port['etcd_peer_port']}"
    tls = rendered.file("n3", "etcd-tls")
    for side in ("", "PEER_"):
        assert env[f"ETCD_{side}CERT_FILE"] == f"{tls}/member.pem"
        assert env[f"ETCD_{side}KEY_FILE"] == f"{tls}/member.key"
        assert env[f"ETCD_{side}TRUSTED_CA_FILE"] == f"{tls}/ca.pem"
        assert env[f"ETCD_{side}CLIENT_CERT_AUTH"] == "true"


def test_etcd_members_and_agents_get_certificates_from_the_etcd_ca(rendered: Render) -> None:
    ca = rendered.credentials / "etcd-ca.pem"
    assert "CA:TRUE" in _cert_text(ca)
    assert (rendered.credentials / "etcd-ca.key").stat().st_mode & 0o077 == 0
    # Not the NATS CA: a NATS server's certificate (clientAuth, for routes) is no etcd client.
    assert ca.read_bytes() != (rendered.credentials / "nats-ca.pem").read_bytes()
    for host in HOSTS:
        member = rendered.credentials / "tls" / f"{host}-etcd.pem"
        client = rendered.credentials / "tls" / f"{host}-etcd-client.pem"
        for cert in (member, client):
            assert _verifies(cert, ca), cert
            assert cert.with_suffix(".key").stat().st_mode & 0o077 == 0
            assert "CA:FALSE" in _cert_text(cert)
        text = _cert_text(member)
        assert (
            f"DNS:etcd.schedagent.internal, DNS:{host}, IP Address:127.0.0.1, DNS:localhost" in text
        ), text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text, text
        assert rendered.file(host, "etcd-tls/member.pem").read_bytes() == member.read_bytes()
        text = _cert_text(client)
        assert f"Subject: CN = schedagent {host}" in text, text
        assert "TLS Web Client Authentication" in text and "Server Authentication" not in text


def test_a_second_run_changes_nothing_and_keeps_the_passwords(rendered: Render) -> None:
    before = _credentials(rendered)
    assert sorted(p for p in before if "/" not in p) == [
        "etcd-ca.key",
        "etcd-ca.pem",
        "nats-ca.key",
        "nats-ca.pem",
        "nats-route",
        "nats-schedagent",
        "nats-schedctl",
        "operator.pem",
    ]
    assert sorted(p for p in before if p.startswith("tls/")) == sorted(
        f"tls/{h}-{kind}.{ext}"
        for h in HOSTS
        for kind in ("etcd", "etcd-client", "nats")
        for ext in ("cnf", "key", "pem")
    )
    again = rendered.run()
    assert again.returncode == 0, again.stdout[-4000:]
    recap = _recap(again.stdout)
    assert set(recap) == set(HOSTS)
    assert all(counts["changed"] == 0 for counts in recap.values()), recap
    assert _credentials(rendered) == before


def _credentials(render: Render) -> dict[str, str]:
    """Every file the roles keep on the control host, by path under credentials/."""
    root = render.credentials
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_preflight_refuses_contradictions(debian_render: Render) -> None:
    rendered = debian_render
    # An existing etcd given while the inventory also deploys one.
    result = rendered.run("-e", '{"schedagent_etcd_endpoints": ["http://192.0.2.1:2379"]}')
    assert result.returncode != 0
    assert "schedagent_etcd_endpoints is set and the inventory group etcd has hosts" in (
        result.stdout
    )
    # Two agents with one node name.
    result = rendered.run("-e", "schedagent_node_name=same")
    assert result.returncode != 0
    assert "Two agents share a node name: same, same, same" in result.stdout


def test_the_metrics_port_opens_to_the_named_prometheus_servers_only(tmp_path: Path) -> None:
    # The inventory's per-host metrics.listen (schedagent_config_extra) is set aside.
    opened = {
        "schedagent_config_extra": {"jobs": {"drain_timeout": 5}},
        "schedagent_metrics_listen": "192.0.2.10:9464",
        "schedagent_metrics_allow": ["192.0.2.50", "10.9.0.0/16"],
    }
    render = _render(PLAYBOOK_BINS["debian"], tmp_path, extra=("-e", json.dumps(opened)))
    path = render.file("n2", "agent.yaml")
    config = yaml.safe_load(path.read_text())
    assert config["metrics"] == {
        "listen": "192.0.2.10:9464",
        "allow": ["192.0.2.50", "10.9.0.0/16"],
    }
    check = subprocess.run(
        [sys.executable, "-m", "schedagent", "check-config", str(path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_preflight_refuses_metrics_off_loopback_with_no_prometheus_named(
    debian_render: Render,
) -> None:
    off_loopback = {"schedagent_config_extra": {}, "schedagent_metrics_listen": "192.0.2.10:9464"}
    result = debian_render.run("-e", json.dumps(off_loopback))
    assert result.returncode != 0
    assert "schedagent_metrics_listen is 192.0.2.10:9464, off loopback" in result.stdout


def test_existing_clusters_skip_the_etcd_and_nats_plays(tmp_path: Path) -> None:
    render = _render(PLAYBOOK_BINS["debian"], tmp_path, existing=True)
    assert not render.file("n1", "etcd.env").exists()
    assert not render.file("n1", "nats-server.conf").exists()
    config = yaml.safe_load(render.file("n1", "agent.yaml").read_text())
    assert config["etcd"]["endpoints"] == EXISTING["schedagent_etcd_endpoints"]
    assert config["nats"]["urls"] == EXISTING["schedagent_nats_urls"]
    check = subprocess.run(
        [sys.executable, "-m", "schedagent", "check-config", str(render.file("n1", "agent.yaml"))],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    # Only the operator key: no NATS passwords for clusters without authentication,
    # and no CA for a NATS without TLS; the context names neither.
    assert sorted(p.name for p in render.credentials.iterdir()) == ["operator.pem"]
    context = _context(render)
    assert context.nats == ("nats://192.0.2.8:4222",)
    assert (context.nats_ca, context.credentials) == (None, None)
    assert not render.file("n1", "schedctl/credentials").exists()
    assert "tls_ca" not in config["nats"]
    assert not any(k.startswith("tls_") for k in config["etcd"])
    # An existing NATS and etcd with TLS: their CAs must be given (none is made for them).
    tls = {
        "schedagent_nats_urls": ["tls://192.0.2.8:4222", "tls://192.0.2.9:4222"],
        "schedctl_nats_urls": ["tls://192.0.2.8:4222", "tls://192.0.2.9:4222"],
    }
    result = render.run("-e", json.dumps(tls))
    assert result.returncode != 0
    assert f"No NATS CA certificate at {render.credentials}/nats-ca.pem" in result.stdout
    ca = _make_ca(tmp_path / "theirs", "their NATS CA")
    given = {**tls, "schedagent_nats_tls_ca_cert": str(ca), "schedctl_nats_tls_ca_cert": str(ca)}
    https = ["https://192.0.2.5:2379", "https://192.0.2.6:2379"]
    result = render.run("-e", json.dumps({**given, "schedagent_etcd_endpoints": https}))
    assert result.returncode != 0
    assert f"need the etcd CA's certificate {render.credentials}/etcd-ca.pem" in result.stdout
    etcd_ca = _make_ca(tmp_path / "their-etcd", "their etcd CA")
    given.update(
        schedagent_etcd_endpoints=https,
        schedagent_etcd_tls_ca_cert=str(etcd_ca),
        schedagent_etcd_tls_ca_key=str(etcd_ca.with_suffix(".key")),
    )
    result = render.run("-e", json.dumps(given))
    assert result.returncode == 0, result.stdout[-4000:]
    config = yaml.safe_load(render.file("n1", "agent.yaml").read_text())
    assert config["nats"]["urls"] == tls["schedagent_nats_urls"]
    assert Path(config["nats"]["tls_ca"]).read_bytes() == ca.read_bytes()
    # Their etcd: its CA, a client certificate issued from it, the first endpoint's name.
    assert config["etcd"]["endpoints"] == https
    assert Path(config["etcd"]["tls_ca"]).read_bytes() == etcd_ca.read_bytes()
    assert _verifies(Path(config["etcd"]["tls_cert"]), etcd_ca)
    assert "tls_server_name" not in config["etcd"]
    check = subprocess.run(
        [sys.executable, "-m", "schedagent", "check-config", str(render.file("n1", "agent.yaml"))],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    context = _context(render)
    assert context.nats == tuple(tls["schedctl_nats_urls"])
    assert context.nats_ca == str(render.file("n1", "schedctl/nats-ca.pem"))
    assert render.file("n1", "schedctl/nats-ca.pem").read_bytes() == ca.read_bytes()


def _make_ca(directory: Path, name: str) -> Path:
    """An EC CA as `openssl req -x509` makes it: directory/ca.pem and directory/ca.key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / "ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(directory / "ca.key"), "-out", str(cert)),
            *("-days", "365", "-subj", f"/CN={name}"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
        ],
        check=True,
        capture_output=True,
    )
    return cert


def _verifies(cert: Path, ca: Path) -> bool:
    argv = ["openssl", "verify", "-CAfile", str(ca), str(cert)]
    return subprocess.run(argv, capture_output=True).returncode == 0


def test_your_own_nats_ca_signs_the_servers_certificates(tmp_path: Path) -> None:
    # Put before the first run where the nats role would make one.
    credentials = tmp_path / "inventory" / "credentials"
    mine = _make_ca(credentials, "my own CA")
    mine.rename(credentials / "nats-ca.pem")
    (credentials / "ca.key").rename(credentials / "nats-ca.key")
    mine = credentials / "nats-ca.pem"
    render = _render(PLAYBOOK_BINS["debian"], tmp_path)
    assert mine.read_text().startswith("-----BEGIN CERTIFICATE-----")
    for host in HOSTS:
        cert = credentials / "tls" / f"{host}-nats.pem"
        assert _verifies(cert, mine), host
        assert "Issuer: CN = my own CA" in _cert_text(cert)
    # A certificate that no longer verifies (signed by another CA, expired, ...) is
    # issued anew on the next run, and only that one.
    other = _make_ca(tmp_path / "other", "another CA")
    n2_cert = credentials / "tls" / "n2-nats.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-key", str(credentials / "tls" / "n2-nats.key")),
            *("-CA", str(other), "-CAkey", str(other.with_suffix(".key")), "-days", "30"),
            *("-subj", "/CN=n2", "-out", str(n2_cert)),
        ],
        check=True,
        capture_output=True,
    )
    n1_before = (credentials / "tls" / "n1-nats.pem").read_bytes()
    again = render.run()
    assert again.returncode == 0, again.stdout[-4000:]
    recap = _recap(again.stdout)
    assert recap["n2"]["changed"] > 0, recap
    assert recap["n1"]["changed"] == recap["n3"]["changed"] == 0, again.stdout
    assert _verifies(n2_cert, mine)
    assert render.file("n2", "nats-tls/server.pem").read_bytes() == n2_cert.read_bytes()
    assert (credentials / "tls" / "n1-nats.pem").read_bytes() == n1_before
    # A certificate given for a server must be signed by the CA.
    foreign = tmp_path / "other" / "n1.pem"
    n1_key = credentials / "tls" / "n1-nats.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-key", str(n1_key), "-CA", str(other)),
            *("-CAkey", str(other.with_suffix(".key")), "-days", "30", "-subj", "/CN=n1"),
            *("-out", str(foreign)),
        ],
        check=True,
        capture_output=True,
    )
    result = render.run(
        "-e", json.dumps({"nats_tls_cert": str(foreign), "nats_tls_key": str(n1_key)})
    )
    assert result.returncode != 0
    assert (
        f"nats_tls_cert {foreign} does not verify against nats_tls_ca_cert {mine}" in result.stdout
    )
    # Without the CA's key, the CA cannot issue: say so rather than make another CA.
    (credentials / "nats-ca.key").unlink()
    result = render.run()
    assert result.returncode != 0
    assert "to issue this server's certificate, its key" in result.stdout
    assert mine.read_text().startswith("-----BEGIN CERTIFICATE-----")


def _context(render: Render) -> Context:
    """The context the schedctl role wrote for the admin host, as schedctl reads it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SCHEDCTL_CONFIG", str(render.file("n1", "schedctl/config.yaml")))
        config = load_config()
    assert config.current is not None and config.current in config.contexts, config
    return config.contexts[config.current]


def test_schedctl_gets_a_context_with_every_nats_server_and_a_credentials_file(
    rendered: Render,
) -> None:
    context = _context(rendered)
    assert context.name == "inventory"  # the inventory directory's name
    ports = [rendered.ports[h]["nats_client_port"] for h in HOSTS]
    assert context.nats == tuple(f"tls://127.0.0.1:{port}" for port in ports)
    assert context.prefix == "sched"
    assert context.nats_ca == str(rendered.file("n1", "schedctl/nats-ca.pem"))
    # schedctl's own lookup finds the operator key: users of the group keep their own.
    assert context.key is None
    credentials = rendered.file("n1", "schedctl/credentials")
    assert context.credentials == str(credentials)
    assert credentials.stat().st_mode & 0o777 == 0o640
    password = rendered.credential("nats-schedctl")
    logins = ",".join(f"tls://schedctl:{password}@127.0.0.1:{port}" for port in ports)
    assert context.urls() == logins
    assert password not in rendered.file("n1", "schedctl/config.yaml").read_text()


@pytest.mark.timeout(900)  # three playbook runs
def test_a_live_key_reloads_and_any_other_restarts(tmp_path: Path) -> None:
    """The role's digest of the settings that take a restart agrees with the agent:
    a log_level change rewrites agent.yaml only; a node_ttl change moves the digest."""
    render = _render(PLAYBOOK_BINS["debian"], tmp_path)

    def files() -> dict[str, tuple[str, str]]:
        return {
            h: (
                render.file(h, "agent.yaml").read_text(),
                render.file(h, "agent.yaml.restart-sha256").read_text(),
            )
            for h in HOSTS
        }

    def agent_says(before: str, after: str) -> list[str]:
        """The keys a SIGHUP with `after` in place of `before` leaves for a restart."""
        old, new = (parse_config(yaml.safe_load(text)) for text in (before, after))
        return merge_live(old, new)[2]

    first = files()
    for change, restart in (
        ("schedagent_log_level=debug", []),
        ("schedagent_node_ttl=12", ["node_ttl"]),
    ):
        result = render.run("-e", change)
        assert result.returncode == 0, result.stdout[-4000:]
        now = files()
        for host in HOSTS:
            assert now[host][0] != first[host][0], (change, host)
            assert agent_says(first[host][0], now[host][0]) == restart, change
            assert (now[host][1] != first[host][1]) == bool(restart), (change, host)


def test_agents_trust_the_operator_key_the_admin_host_gets(rendered: Render) -> None:
    key_file = rendered.file("n1", "schedctl/operator.key")
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = SigningKey.load(key_file)
    pem = rendered.credentials / "operator.pem"
    assert pem.stat().st_mode & 0o077 == 0, oct(pem.stat().st_mode)
    for host in HOSTS:
        config = yaml.safe_load(rendered.file(host, "agent.yaml").read_text())
        assert config["security"]["trusted_keys"] == [public_text(key.public)]
    # The key file's seed signs what the agents' public key verifies.
    trusted = parse_public(config["security"]["trusted_keys"][0])
    spec = {"cmd": "true"}
    assert verify(spec, key.sign(spec), {key_id(trusted): trusted}, 60) == key.key_id


@pytest.mark.timeout(900)  # four playbook runs
def test_more_trusted_keys_add_to_the_operator_key(tmp_path: Path) -> None:
    render = _render(PLAYBOOK_BINS["debian"], tmp_path)
    extra = public_text(SigningKey.generate().public)
    mine = public_text(SigningKey.generate().public)
    result = render.run(
        "-e",
        json.dumps(
            {
                "schedagent_trusted_keys": [mine],
                "schedagent_config_extra": {"security": {"trusted_keys": [extra]}},
            }
        ),
    )
    assert result.returncode == 0, result.stdout[-4000:]
    operator = public_text(SigningKey.load(render.file("n1", "schedctl/operator.key")).public)
    config = yaml.safe_load(render.file("n2", "agent.yaml").read_text())
    assert config["security"]["trusted_keys"] == [mine, operator, extra]
    check = subprocess.run(
        [sys.executable, "-m", "schedagent", "check-config", str(render.file("n2", "agent.yaml"))],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    # No operator key and no other key: every job would be refused, so it is refused.
    result = render.run("-e", '{"schedagent_operator_key": false}')
    assert result.returncode != 0
    assert "every job is refused" in result.stdout
    # A key that is not Ed25519 is refused too.
    rsa = tmp_path / "rsa.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024"],
        stdout=rsa.open("wb"),
        check=True,
    )
    result = render.run("-e", f"schedagent_operator_key_file={rsa}")
    assert result.returncode != 0
    assert "is not an Ed25519 private key" in result.stdout


def _env_file(path: Path) -> dict[str, str]:
    pairs = re.findall(r'^([A-Z_]+)="?(.*?)"?$', path.read_text(), re.MULTILINE)
    return dict(pairs)


def _get_json(
    url: str, body: dict[str, object] | None = None, tls: ssl.SSLContext | None = None
) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    opener = _HTTP if tls is None else _https_opener(tls)
    with opener.open(urllib.request.Request(url, data=data), timeout=2) as resp:
        reply = json.load(resp)
    assert isinstance(reply, dict)
    return reply


def _https_opener(tls: ssl.SSLContext) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
    )


def _answers(
    url: str, body: dict[str, object] | None = None, tls: ssl.SSLContext | None = None
) -> dict[str, object] | None:
    try:
        return _get_json(url, body, tls)
    except OSError:
        return None


def _etcd_tls(render: Render, ca: Path | None = None, client: str | None = "n1") -> ssl.SSLContext:
    """A client of the rendered etcd: its CA (or another), and n1's agent certificate."""
    tls = ssl.create_default_context(cafile=str(ca or render.credentials / "etcd-ca.pem"))
    if client is not None:
        cert = render.credentials / "tls" / f"{client}-etcd-client.pem"
        tls.load_cert_chain(cert, cert.with_suffix(".key"))
    return tls


@pytest.fixture(scope="module")
def cluster(debian_render: Render, request: pytest.FixtureRequest) -> Iterator[Render]:
    """etcd, NATS and three agents, each started from the files render.yml wrote."""
    render = debian_render
    failed_before = request.session.testsfailed
    procs: list[ManagedProcess] = []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    base_env["NO_PROXY"] = base_env["no_proxy"] = "127.0.0.1,localhost"
    logs = render.base / "logs"
    try:
        for host in HOSTS:
            etcd_env = {**base_env, **_env_file(render.file(host, "etcd.env"))}
            procs.append(
                ManagedProcess(f"etcd-{host}", [ETCD_BIN], logs / f"etcd-{host}.log", env=etcd_env)
            )
            nats_argv = [NATS_BIN, "-c", str(render.file(host, "nats-server.conf"))]
            procs.append(ManagedProcess(f"nats-{host}", nats_argv, logs / f"nats-{host}.log"))
        for proc in procs:
            proc.start()
        for host in HOSTS:
            ports = render.ports[host]
            wait_for(
                lambda p=ports: _etcd_healthy(render, p["etcd_client_port"]), 30, f"etcd on {host}"
            )
            wait_for(
                lambda p=ports: (
                    _answers(f"http://127.0.0.1:{p['nats_monitor_port']}/healthz") is not None
                ),
                30,
                f"NATS on {host}",
            )
        for host in HOSTS:
            argv = [sys.executable, "-m", "schedagent", "run", "--config"]
            argv.append(str(render.file(host, "agent.yaml")))
            agent_env = {**base_env, "PYTHONUNBUFFERED": "1"}
            agent_dir = render.base / "agents" / host
            agent_dir.mkdir(parents=True)
            procs.append(
                ManagedProcess(host, argv, logs / f"agent-{host}.log", env=agent_env, cwd=agent_dir)
            )
            procs[-1].start()
        yield render
        if request.session.testsfailed > failed_before:
            _dump_logs(procs)
    except BaseException:
        _dump_logs(procs)
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()


def _dump_logs(procs: list[ManagedProcess]) -> None:
    for proc in procs:
        sys.stderr.write(f"\n----- {proc.name}: {proc.log_path}\n{proc.log_tail(20)}\n")


def _etcd_healthy(render: Render, port: int) -> bool:
    reply = _answers(f"https://127.0.0.1:{port}/health", tls=_etcd_tls(render))
    return reply is not None and str(reply.get("health")).lower() == "true"


def _registered(render: Render, host: str) -> bool:
    """The schedagent role's own check: the node's key, read through etcd's JSON gateway
    with the agent's client certificate."""
    key = base64.b64encode(f"/schedagent/nodes/{host}".encode()).decode()
    port = render.ports["n1"]["etcd_client_port"]
    reply = _answers(f"https://127.0.0.1:{port}/v3/kv/range", {"key": key}, _etcd_tls(render))
    return reply is not None and bool(reply.get("kvs"))


def _schedctl(
    render: Render, *args: str, url: str | None = None, ca: str | None = None
) -> subprocess.CompletedProcess[str]:
    """schedctl through the context the role writes for the admin host (its NATS URLs,
    CA and credentials file); url and ca (a file, "" for none) instead of the context's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDCTL_", "XDG_"))}
    env["SCHEDCTL_CONFIG"] = str(render.file("n1", "schedctl/config.yaml"))
    # The key the schedctl role installs as /etc/schedctl/operator.key.
    env["SCHEDCTL_KEY"] = str(render.file("n1", "schedctl/operator.key"))
    # On the command line, not in the environment: click ignores an empty variable, so
    # SCHEDCTL_NATS_CA="" would leave the context's CA in force (and TLS on).
    given = [f"--nats-ca={ca}"] if ca is not None else []
    if url is not None:
        given.append(f"--nats={url}")
    return subprocess.run(
        [SCHEDCTL, *given, *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_the_rendered_files_make_a_working_cluster(cluster: Render) -> None:
    for host in HOSTS:
        wait_for(lambda h=host: _registered(cluster, h), 60, f"{host} registered in etcd")

    def all_nodes() -> bool:
        result = _schedctl(cluster, "nodes", "--json")
        names = {n["name"] for n in json.loads(result.stdout or "{}").get("nodes", [])}
        return result.returncode == 0 and names == set(HOSTS)

    wait_for(all_nodes, 60, "schedctl to see every node", interval=0.5)
    job = _schedctl(cluster, "submit", "--cmd", "echo deployed", "--wait")
    assert job.returncode == 0, job.stderr
    assert "deployed" in job.stdout


@pytest.mark.slow
def test_the_rendered_nats_refuses_clients_without_the_password(cluster: Render) -> None:
    port = cluster.ports["n1"]["nats_client_port"]
    result = _schedctl(cluster, "nodes", url=f"tls://127.0.0.1:{port}")
    assert result.returncode == EXIT_NO_CLUSTER, result.stdout + result.stderr
    assert "authorization violation" in result.stderr.lower(), result.stderr
    wrong = _schedctl(cluster, "nodes", url=f"tls://schedctl:wrong@127.0.0.1:{port}")
    assert wrong.returncode == EXIT_NO_CLUSTER, wrong.stdout + wrong.stderr


@pytest.mark.slow
def test_the_rendered_nats_talks_tls_only_with_a_certificate_from_the_cluster_ca(
    cluster: Render, tmp_path: Path
) -> None:
    port = cluster.ports["n1"]["nats_client_port"]
    password = cluster.credential("nats-schedctl")
    # With the cluster's CA: answered. First, so the refusals below cannot come from a
    # cluster that is not up yet.
    wait_for(lambda: _schedctl(cluster, "nodes").returncode == 0, 60, "an agent to answer")
    # A plain TCP client with the right password: the server requires TLS.
    plain = _schedctl(cluster, "nodes", url=f"nats://schedctl:{password}@127.0.0.1:{port}", ca="")
    assert plain.returncode == EXIT_NO_CLUSTER, plain.stdout + plain.stderr
    # A TLS client that trusts another CA refuses the server's certificate.
    other = tmp_path / "other-ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other)),
            *("-days", "2", "-subj", "/CN=another CA"),
        ],
        check=True,
        capture_output=True,
    )
    refused = _schedctl(cluster, "nodes", ca=str(other))
    assert refused.returncode == EXIT_NO_CLUSTER, refused.stdout + refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_the_rendered_etcd_takes_only_tls_clients_with_a_certificate_from_its_ca(
    cluster: Render, tmp_path: Path
) -> None:
    for host in HOSTS:
        wait_for(lambda h=host: _registered(cluster, h), 60, f"{host} registered in etcd")
    port = cluster.ports["n2"]["etcd_client_port"]
    url = f"127.0.0.1:{port}/v3/kv/range"
    body: dict[str, object] = {"key": base64.b64encode(b"/schedagent/nodes/n1").decode()}
    # Plain HTTP: no answer (the port speaks TLS only).
    with pytest.raises(OSError):
        _get_json(f"http://{url}", body)
    # TLS without a client certificate: the handshake is refused.
    with pytest.raises(OSError):
        _get_json(f"https://{url}", body, _etcd_tls(cluster, client=None))
    # A client certificate from another CA: refused as well.
    other = _make_ca(tmp_path / "other", "another CA")
    key, cert = tmp_path / "other.key", tmp_path / "other.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-CA", str(other)),
            *("-CAkey", str(other.with_suffix(".key")), "-days", "2", "-subj", "/CN=intruder"),
            *("-addext", "extendedKeyUsage=clientAuth"),
        ],
        check=True,
        capture_output=True,
    )
    intruder = _etcd_tls(cluster, client=None)
    intruder.load_cert_chain(cert, key)
    with pytest.raises(OSError):
        _get_json(f"https://{url}", body, intruder)
    # With the agent's certificate: the record.
    assert _get_json(f"https://{url}", body, _etcd_tls(cluster)).get("kvs")
    # etcdctl as an operator would run it on a member: refused without certificates,
    # answered with the member's own.
    etcdctl = [ETCDCTL_BIN, f"--endpoints=https://127.0.0.1:{port}", "--dial-timeout=3s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    bare = subprocess.run(
        [*etcdctl, "endpoint", "health"], capture_output=True, text=True, timeout=60, env=env
    )
    assert bare.returncode != 0, bare.stdout
    member = cluster.file("n2", "etcd-tls")
    certs = [
        f"--cacert={member}/ca.pem",
        f"--cert={member}/member.pem",
        f"--key={member}/member.key",
    ]
    health = subprocess.run(
        [*etcdctl, *certs, "endpoint", "health"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert health.returncode == 0 and "is healthy" in health.stdout + health.stderr, health


@pytest.mark.slow
def test_schedctl_may_call_the_api_and_read_streams_but_not_publish_for_agents(
    cluster: Render,
) -> None:
    for host in HOSTS:
        wait_for(lambda h=host: _registered(cluster, h), 60, f"{host} registered in etcd")
    job = _schedctl(cluster, "submit", "--cmd", "echo permitted", "--wait")
    assert job.returncode == 0, job.stderr
    job_id = job.stderr.split()[0]
    logs = _schedctl(cluster, "logs", job_id)
    assert (logs.returncode, logs.stdout) == (0, "permitted\n"), logs.stderr
    violations = asyncio.run(_schedctl_violations(cluster, job_id))
    forbidden = ("sched.dispatch.n1", "sched.control.n1", "sched.leader", "sched.events.x")
    for subject in forbidden:
        assert any(f'publish to "{subject}"' in v for v in violations), violations
    # The agents did their whole job (placing, dispatching, running, streaming) with
    # the agents' permissions: not one violation on their side.
    for host in HOSTS:
        log = (cluster.base / "logs" / f"agent-{host}.log").read_text()
        assert "violation" not in log.lower(), log[-3000:]
        server_log = (cluster.base / "logs" / f"nats-{host}.log").read_text()
        for line in server_log.splitlines():
            assert "Violation" not in line or 'User "schedctl"' in line, line


async def _schedctl_violations(render: Render, job_id: str) -> list[str]:
    """What the server refused schedctl's user: forbidden publishes and JetStream admin."""
    password = render.credential("nats-schedctl")
    port = render.ports["n1"]["nats_client_port"]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())  # nats-py lower-cases the server's -ERR

    nc = await nats.connect(
        f"tls://schedctl:{password}@127.0.0.1:{port}",
        tls=ssl.create_default_context(cafile=str(render.credentials / "nats-ca.pem")),
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=5,
    )
    try:
        # The API, and the events stream through an ordered consumer, as schedctl reads it.
        reply = json.loads(
            (
                await nc.request("sched.api.get", b'{"v":1,"id":"%s"}' % job_id.encode(), timeout=5)
            ).data
        )
        assert reply["ok"] and reply["job"]["state"] == "SUCCEEDED", reply
        js = nc.jetstream(timeout=3)
        sub = await js.subscribe(
            f"sched.events.{job_id}", stream="SCHED_EVENTS", ordered_consumer=True
        )
        first = json.loads((await sub.next_msg(timeout=5)).data)
        assert first["job"] == job_id
        await sub.unsubscribe()
        assert errors == []
        for subject in ("sched.dispatch.n1", "sched.control.n1", "sched.leader", "sched.events.x"):
            await nc.publish(subject, b'{"v":1}')
        await nc.flush()
        # Nor may it change JetStream: deleting a stream is refused (the request never
        # reaches JetStream, so no answer comes).
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.delete_stream("SCHED_DISPATCH")
        wait_until = asyncio.get_running_loop().time() + 5
        while len(errors) < 5 and asyncio.get_running_loop().time() < wait_until:
            await asyncio.sleep(0.05)
        assert any('publish to "$js.api.stream.delete.sched_dispatch"' in e for e in errors)
        assert all("permissions violation" in e for e in errors), errors
        return errors
    finally:
        await nc.close()
