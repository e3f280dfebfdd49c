"""The Ansible roles are the collection schedagent.fleet: it builds, the playbooks name
its roles by FQCN, every entry point has an argument spec, tags carry the role's name,
and the agent role restarts the agent exactly when the agent itself would need it.

The reload-or-restart decision is checked against the agent's own: for each change,
the role's digest of "settings that take a restart" (the collection's filter plugin)
moves if and only if `merge_live` (what a SIGHUP does) leaves a key for a restart.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from schedagent.config import parse_config
from schedagent.daemon.reload import LIVE_KEYS, merge_live

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
COLLECTION = ANSIBLE_DIR / "ansible_collections" / "schedagent" / "fleet"
ROLES = ("etcd", "nats", "agent", "schedctl")
PLAYBOOKS = (ANSIBLE_DIR / "deploy.yml", ANSIBLE_DIR / "tests" / "render.yml")
GALAXY = "/usr/bin/ansible-galaxy"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _role_uses() -> list[tuple[str, str]]:
    """(role name, entry point) of every role a playbook plays or imports."""
    uses = []
    for playbook in PLAYBOOKS:
        for play in _yaml(playbook):
            uses += [(r["role"], "main") for r in play.get("roles", [])]
            for task in play.get("tasks", []):
                for module in ("ansible.builtin.import_role", "ansible.builtin.include_role"):
                    if module in task:
                        spec = task[module]
                        uses.append((spec["name"], spec.get("tasks_from", "main")))
    return uses


def test_the_collection_builds_with_every_role(tmp_path: Path) -> None:
    built = subprocess.run(
        [GALAXY, "collection", "build", str(COLLECTION), "--output-path", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    version = _yaml(COLLECTION / "galaxy.yml")["version"]
    tarball = tmp_path / f"schedagent-fleet-{version}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for role in ROLES:
        assert f"roles/{role}/tasks/main.yml" in names
        assert f"roles/{role}/meta/argument_specs.yml" in names
    assert "plugins/filter/restart_keys.py" in names
    assert "MANIFEST.json" in names


def test_the_playbooks_name_the_collections_roles_by_fqcn() -> None:
    uses = _role_uses()
    assert {name for name, _ in uses} == {f"schedagent.fleet.{role}" for role in ROLES}
    # The bare roles are gone: nothing else answers to `etcd` or `nats`.
    assert not (ANSIBLE_DIR / "roles").exists()
    config = (ANSIBLE_DIR / "ansible.cfg").read_text()
    assert "collections_path = .\n" in config and "roles_path" not in config


def test_every_entry_point_used_has_an_argument_spec_with_every_default() -> None:
    for name, entry in _role_uses():
        role = COLLECTION / "roles" / name.removeprefix("schedagent.fleet.")
        specs = _yaml(role / "meta" / "argument_specs.yml")["argument_specs"]
        assert entry in specs, f"{name}: no argument_specs entry for {entry}"
        defaults = set(_yaml(role / "defaults" / "main.yml"))
        missing = defaults - set(specs[entry]["options"])
        assert not missing, f"{name} {entry}: untyped {sorted(missing)}"


def _tags(node: Any) -> list[str]:
    """Every tag anywhere under node (a play, a task list, a task)."""
    if isinstance(node, list):
        return [tag for item in node for tag in _tags(item)]
    if not isinstance(node, dict):
        return []
    own = node.get("tags", [])
    return [*([own] if isinstance(own, str) else own), *_tags(list(node.values()))]


def test_every_tag_names_its_role() -> None:
    for role in ROLES:
        tags = set()
        for path in (COLLECTION / "roles" / role).glob("**/*.yml"):
            tags |= set(_tags(_yaml(path)))
        assert tags, role
        assert all(t.startswith(f"schedagent_{role}_") for t in tags), (role, sorted(tags))
    play_tags = set(_tags(_yaml(ANSIBLE_DIR / "deploy.yml"))) - {"always"}
    assert play_tags == {f"schedagent_{role}" for role in ROLES}


def test_the_roles_live_keys_are_the_agents() -> None:
    role_vars = _yaml(COLLECTION / "roles" / "agent" / "vars" / "main.yml")
    assert sorted(role_vars["_schedagent_live_keys"]) == sorted(LIVE_KEYS)


def _plugin() -> ModuleType:
    path = COLLECTION / "plugins" / "filter" / "restart_keys.py"
    spec = importlib.util.spec_from_file_location("restart_keys", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE: dict[str, Any] = {
    "node_name": "n1",
    "labels": {"zone": "a"},
    "cpus": None,
    "node_ttl": 10,
    "log_level": "info",
    "security": {"job_user": "schedjob", "trusted_keys": []},
    "etcd": {"endpoints": ["http://10.0.0.1:2379"], "prefix": "/schedagent"},
    "nats": {"urls": ["nats://u:p@10.0.0.1:4222"], "prefix": "sched", "stream_replicas": 1},
    "metrics": {"listen": "127.0.0.1:9464"},
}
KEY = "ed25519:" + "A" * 43 + "="
CHANGES = {
    # Reloaded live: the same digest.
    "labels.zone": "b",
    "labels.rack": "r1",
    "cpus": 2,
    "log_level": "debug",
    "jobs.drain_timeout": 120,
    "output.tail_bytes": 8192,
    "security.trusted_keys": [KEY],
    "security.job_user": None,
    # A restart: another digest.
    "node_ttl": 12,
    "etcd.endpoints": ["http://10.0.0.2:2379"],
    "nats.urls": ["nats://u:other@10.0.0.1:4222"],
    "nats.prefix": "other",
    "metrics.listen": "127.0.0.1:9465",
    "containment.cgroups": False,
}


def _changed(key: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(BASE)
    *parents, leaf = key.split(".")
    inner = config
    for part in parents:
        inner = inner.setdefault(part, {})
    inner[leaf] = value
    return config


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_the_restart_digest_moves_exactly_when_the_agent_needs_a_restart(key: str) -> None:
    plugin = _plugin()
    live = sorted(LIVE_KEYS)
    new = _changed(key, CHANGES[key])
    _, applied, restart = merge_live(parse_config(BASE), parse_config(new))
    assert applied or restart, f"{key}: not a change the agent sees"
    moved = plugin.restart_digest(new, live) != plugin.restart_digest(BASE, live)
    assert moved == bool(restart), (key, applied, restart)
