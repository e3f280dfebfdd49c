"""The admin side: an inventory for the fleet, ansible-playbook deploy.yml, schedctl.

The playbook runs from this machine with Debian's ansible-core (/usr/bin), over SSH as
the hosts' `debian` user with sudo, exactly as docs/deploy.md tells an operator to;
schedctl runs from this checkout's .venv, pointed at the hosts' NATS servers over TLS
with the password and the NATS CA the playbook generated beside the inventory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from .fleet import HOSTS, Fleet

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
PLAYBOOK = "/usr/bin/ansible-playbook"
SCHEDCTL = REPO / ".venv" / "bin" / "schedctl"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


def write_inventory(fleet: Fleet, directory: Path, deb: Path, trusted_key: str) -> Path:
    """hosts.yml for the fleet: every host in etcd, nats and agents; node1 also admin.

    trusted_key: the operator's public key, which the agents require on every job.
    """
    ssh_args = (
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
        "-o ServerAliveInterval=5 -o ServerAliveCountMax=2"
    )
    hosts = {
        h.name: {
            "ansible_host": h.address,
            # No default route on the bridge: name the address the services listen on.
            "etcd_address": h.address,
            "nats_address": h.address,
            # node1 is zone a, the others zone b: a job for zone b runs on a host that
            # can be powered off without taking the admin host's NATS server along.
            "schedagent_labels": {"zone": "a" if h.name == "node1" else "b"},
        }
        for h in fleet.hosts
    }
    names = {h.name: None for h in fleet.hosts}
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "debian",
                "ansible_ssh_private_key_file": str(fleet.ssh_key),
                "ansible_ssh_common_args": ssh_args,
                "schedagent_deb": str(deb),
                "etcd_cluster_token": f"schedagent-e2e-{fleet.tag}",
                "schedagent_config_extra": {"security": {"trusted_keys": [trusted_key]}},
            },
            "hosts": hosts,
            "children": {
                "etcd": {"hosts": names},
                "nats": {"hosts": names},
                "agents": {"hosts": names},
                "admin": {"hosts": {fleet.hosts[0].name: None}},
            },
        }
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


@dataclasses.dataclass
class PlaybookRun:
    returncode: int
    output: str
    log: Path
    seconds: float

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {ok: .., changed: .., failed: ..}."""
        tail = self.output.rsplit("PLAY RECAP", 1)[-1]
        return {
            host: {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
            for host, counts in RECAP_RE.findall(tail)
        }

    def changed_tasks(self) -> list[str]:
        """The "changed: [host]" lines with the task above each, to say what changed."""
        task, found = "", []
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line
            elif line.startswith("changed:"):
                found.append(f"{task} {line}")
        return found


# A playbook run takes 3-4 minutes on nspawn hosts; under TCG 9-15 minutes on a quiet
# machine, and past 15 on a busy one (it was cut there once, in stop 26).
PLAYBOOK_TIMEOUT = 2700.0 if HOSTS == "qemu" else 900.0


def playbook(
    inventory: Path, log: Path, *extra: str, timeout: float = PLAYBOOK_TIMEOUT
) -> PlaybookRun:
    """ansible-playbook -i INVENTORY deploy.yml EXTRA..., from ansible/ (its ansible.cfg)."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        # Its SSH control sockets and temporary files stay in this run's directory.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(log.parent / "ansible-cp"),
        "ANSIBLE_LOCAL_TEMP": str(log.parent / "ansible-tmp"),
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=30s",
    }
    start = time.monotonic()
    # Written as it runs (tail -f it), read back at the end.
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PLAYBOOK, "-i", str(inventory), "deploy.yml", *extra],
            cwd=ANSIBLE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return PlaybookRun(returncode, log.read_text(), log, time.monotonic() - start)


@dataclasses.dataclass
class Schedctl:
    """schedctl from .venv, at every host's NATS server (TLS) with the generated password."""

    urls: str
    # Its own HOME: no operator key or setting of this machine's root leaks in.
    home: Path
    prefix: str = "sched"
    # The CA that signed the NATS servers' certificates (SCHEDCTL_NATS_CA).
    ca: Path | None = None

    @classmethod
    def for_inventory(cls, fleet: Fleet, inventory: Path, home: Path) -> Schedctl:
        credentials = inventory.parent / "credentials"
        password = (credentials / "nats-schedctl").read_text().strip()
        urls = ",".join(f"tls://schedctl:{password}@{h.address}:4222" for h in fleet.hosts)
        return cls(urls, home, ca=credentials / "nats-ca.pem")

    @staticmethod
    def keygen(home: Path) -> str:
        """Makes the operator's key where schedctl looks first; returns its public key."""
        key = home / ".config" / "schedctl" / "operator.key"
        proc = subprocess.run(
            [str(SCHEDCTL), "keygen", str(key)],
            env={**os.environ, "HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout.strip()

    def run(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """schedctl ARGS...; env: settings over the usual ones ("" unsets one)."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SCHEDCTL_", "XDG_"))},
            "HOME": str(self.home),
            "SCHEDCTL_NATS_URL": self.urls,
            "SCHEDCTL_PREFIX": self.prefix,
            "SCHEDCTL_NATS_CA": str(self.ca or ""),
            **(env or {}),
        }
        return subprocess.run(
            [str(SCHEDCTL), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        if proc.returncode != 0:
            raise RuntimeError(f"schedctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return json.loads(proc.stdout)

    def submit(self, cmd: str, *options: str) -> str:
        proc = self.run("submit", "--cmd", cmd, *options)
        if proc.returncode != 0:
            raise RuntimeError(f"schedctl submit exited {proc.returncode}: {proc.stderr}")
        return proc.stdout.strip()

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.json("status", job_id)["job"]
        return job
