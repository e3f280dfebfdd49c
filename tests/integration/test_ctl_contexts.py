"""schedctl's contexts on real servers: the current one or --context picks the cluster and
its operator key; a credentials file carries the NATS password, and a loose one is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schedagent.dev.procs import NATS_BIN, ManagedProcess, free_port, wait_for

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")


def _schedctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Nothing of the caller's schedctl settings: only the config file speaks.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDCTL_", "XDG_"))}
    env["SCHEDCTL_CONFIG"] = str(config)
    return subprocess.run(
        [SCHEDCTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _write(config: Path, body: dict[str, Any]) -> None:
    config.write_text(yaml.safe_dump(body))


def test_the_current_context_or_the_named_one_picks_the_cluster_and_its_key(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(1)
    config = tmp_path / "config.yaml"
    dead = f"nats://127.0.0.1:{free_port()}"
    live = {"nats": [dead, cluster.nats_url], "key": str(cluster.key_path)}
    _write(config, {"current": "gone", "contexts": {"gone": {"nats": dead}, "live": live}})

    refused = _schedctl(config, "--timeout", "1", "nodes")
    assert refused.returncode != 0 and "cannot connect to NATS" in refused.stderr

    named = _schedctl(config, "--context", "live", "nodes")
    assert named.returncode == 0, named.stderr
    assert "node1" in named.stdout

    assert _schedctl(config, "context", "use", "live").returncode == 0
    assert yaml.safe_load(config.read_text())["current"] == "live"
    listed = _schedctl(config, "context", "list").stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [["gone", dead], ["*", "live"]]
    # The context's operator key signs: the agents run only jobs signed by a trusted key.
    ran = _schedctl(config, "submit", "--cmd", "echo signed-by-context", "--wait")
    assert (ran.returncode, ran.stdout) == (0, "signed-by-context\n"), ran.stderr

    unknown = _schedctl(config, "--context", "staging", "nodes")
    assert unknown.returncode != 0
    assert "no context 'staging'" in unknown.stderr and "gone, live" in unknown.stderr


@pytest.fixture
def nats_with_password(tmp_path: Path) -> Iterator[str]:
    """A nats-server that lets in only user schedctl with password right (no agents)."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'host: "127.0.0.1"\nport: {port}\n'
        'authorization { users = [ {user: "schedctl", password: "right"} ] }\n'
    )
    with ManagedProcess("nats", [NATS_BIN, "-c", str(conf)], tmp_path / "nats.log") as proc:
        wait_for(lambda: "Server is ready" in proc.log_tail(50), 20, "nats-server")
        yield f"nats://127.0.0.1:{port}"


def test_the_credentials_file_carries_the_password_and_must_be_closed_to_others(
    nats_with_password: str, tmp_path: Path
) -> None:
    config, creds = tmp_path / "config.yaml", tmp_path / "nats.credentials"
    context = {"nats": nats_with_password, "credentials": str(creds)}
    _write(config, {"current": "prod", "contexts": {"prod": context}})

    creds.write_text("schedctl:right\n")
    creds.chmod(0o640)
    # In: nothing answers, since no agent runs, but NATS took the password.
    inside = _schedctl(config, "--timeout", "1", "nodes")
    assert "no agent answered" in inside.stderr, inside.stderr

    creds.write_text("schedctl:wrong\n")
    refused = _schedctl(config, "--timeout", "1", "nodes")
    assert "cannot connect to NATS" in refused.stderr, refused.stderr
    assert "wrong" not in refused.stderr + refused.stdout, "the password is never shown"

    creds.write_text("schedctl:right\n")
    creds.chmod(0o644)
    loose = _schedctl(config, "--timeout", "1", "nodes")
    assert loose.returncode != 0
    assert f"the credentials file {creds} is open to others (mode 0644)" in loose.stderr
