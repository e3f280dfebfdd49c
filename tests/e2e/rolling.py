"""Held jobs and unit watching for the reload and rolling-restart tests.

A held job runs on the node it names until the test drops a release file into its
working directory (the job user's home), marking its start, a beat every 0.2 s and its
end there: what the job's own process did, judged apart from the scheduler's records.
A restart hands the held jobs over to the next agent: they run on through it, and are
released only once every agent has restarted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from schedagent.dev import marks

from .fleet import Host

JOB_HOME = "/var/lib/schedjob"
# A job nobody releases still ends, failed; a playbook run here takes 3-4 minutes on a
# busy machine, so the limit is well beyond that.
HOLD_LIMIT_BEATS = 4500  # 15 minutes at 0.2 s


def held_command(tag: str) -> str:
    """A job that runs until the file release-<tag> appears in its working directory."""
    wait = (
        f"i=0; until [ -e release-{tag} ] || [ $i -ge {HOLD_LIMIT_BEATS} ]; do"
        f" sleep 0.2; i=$((i+1)); done; [ -e release-{tag} ]"
    )
    return marks.marked(wait, f"marks-{tag}", beat=True)


def release(host: Host, tag: str) -> None:
    host.ssh(f"touch {JOB_HOME}/release-{tag}")


def host_marks(host: Host, tag: str) -> list[marks.Mark]:
    text = host.ssh(f"cat {JOB_HOME}/marks-{tag} 2>/dev/null || true")
    return marks.parse(text, host.name)


def longest_silence(seen: list[marks.Mark]) -> dict[str, float]:
    """Per job, the longest time between two of its own marks (its beats every 0.2 s):
    a job whose process was stopped or killed and started again shows a long one."""
    times: dict[str, list[float]] = {}
    for mark in seen:
        times.setdefault(mark.job, []).append(mark.at)
    return {
        job: max((b - a for a, b in itertools.pairwise(sorted(ts))), default=0.0)
        for job, ts in times.items()
    }


def unit(host: Host, service: str, *props: str) -> dict[str, str]:
    out = host.ssh(f"systemctl show {service} {' '.join('-p ' + p for p in props)}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def down_windows(hosts: list[Host], service: str) -> list[tuple[float, float, str]]:
    """(left active, active again, host) of each host's last restart, in CLOCK_MONOTONIC
    microseconds (one kernel under nspawn: comparable across hosts), by start."""
    props = ("ActiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    windows = []
    for host in hosts:
        u = unit(host, service, *props)
        windows.append((float(u[props[0]]), float(u[props[1]]), host.name))
    return sorted(windows)


def overlapping(windows: list[tuple[float, float, str]]) -> list[str]:
    """Pairs of restarts where the second stopped before the first was active again."""
    return [
        f"{a[2]} down until {a[1]:.0f}, {b[2]} down from {b[0]:.0f}"
        for a, b in itertools.pairwise(windows)
        if b[0] < a[1]
    ]


def edit_inventory(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    inventory = yaml.safe_load(path.read_text())
    change(inventory)
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
