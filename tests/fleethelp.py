"""Fleet-run test helpers: schedctl as a subprocess, each host's marks, a signed group."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from schedagent.core.fleet import Group, Target, parse_definition
from schedagent.core.model import new_job_id
from schedagent.core.signing import SigningKey
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster, harness_key

MARKS = "fleet-marks"  # relative: each part writes into its own agent's directory
FAIL_HERE = "fail-here"  # a part fails on a host whose directory has this file


def schedctl(
    cluster: LocalCluster, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from schedagent.ctl.main import main; main()"]
    base = ["--nats", cluster.nats_url, "--key", str(harness_key()[1]), "--timeout", "5"]
    return subprocess.run([*command, *base, *args], capture_output=True, text=True, timeout=timeout)


def part_cmd(body: str = "true") -> str:
    """A part that marks its start and end in its agent's directory, runs body, and
    fails where the test put FAIL_HERE."""
    return marks.marked(f"{body}\ntest ! -e {FAIL_HERE}", MARKS)


def starts(cluster: LocalCluster) -> dict[str, list[marks.Run]]:
    """Each host's runs as its own marks say (a host that ran nothing has none)."""
    found = marks.read({name: a.dir / MARKS for name, a in cluster.agents.items()})
    by_host: dict[str, list[marks.Run]] = {name: [] for name in cluster.agents}
    for run in marks.runs(found):
        by_host[run.host].append(run)
    return by_host


def fail_on(cluster: LocalCluster, host: str) -> None:
    (cluster.agents[host].dir / FAIL_HERE).write_text("")


def status(cluster: LocalCluster, group_id: str) -> dict[str, Any]:
    shown = schedctl(cluster, "status", group_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def results(cluster: LocalCluster, group_id: str) -> dict[str, str]:
    return {row["host"]: row["result"] for row in status(cluster, group_id)["hosts"]}


def signed_group(
    cmd: str,
    selector: dict[str, Any],
    hosts: list[str],
    key: SigningKey | None = None,
    accepted_at: float | None = None,
) -> Group:
    """A group signed by key (the harness's), made at accepted_at (its id's clock too)."""
    group_id = f"g-{new_job_id(accepted_at)}"
    definition = parse_definition(
        {"id": group_id, "job": {"cmd": cmd}, "selector": selector, "policy": {}}
    )
    signature = (key or harness_key()[0]).sign_group(definition.to_dict())
    targets = tuple(Target(h, True) for h in hosts)
    return Group(definition, signature, accepted_at or 0.0, targets)


def group_id_of(done: subprocess.CompletedProcess[str]) -> str:
    """The id `run --wait` printed first on stderr."""
    return next(line for line in done.stderr.splitlines() if line.startswith("g-"))
