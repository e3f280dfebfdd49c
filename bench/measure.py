"""What the new benchmarks measure processes with: CPU seconds by kind, percentiles."""

from __future__ import annotations

import resource
import time
from typing import Any

import psutil

from schedagent.dev.cluster import LocalCluster


def cpu_by_kind(cluster: LocalCluster, leader: str | None) -> dict[str, float]:
    """User+sys CPU seconds so far of etcd, nats-server, the leader agent, the other
    agents, the jobs they ran (their reaped children) and this process (the client)."""
    kinds = dict.fromkeys(("etcd", "nats-server", "leader", "other agents", "jobs"), 0.0)
    for member in cluster.etcd_members:
        kinds["etcd"] += _own(member.pid)
    kinds["nats-server"] = _own(cluster.nats.pid)
    for name, agent in cluster.agents.items():
        kinds["leader" if name == leader else "other agents"] += _own(agent.pid)
        kinds["jobs"] += _children(agent.pid)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kinds["client"] = usage.ru_utime + usage.ru_stime
    return kinds


def _times(pid: int | None) -> Any:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None


def _own(pid: int | None) -> float:
    t = _times(pid)
    return 0.0 if t is None else t.user + t.system


def _children(pid: int | None) -> float:
    t = _times(pid)
    return 0.0 if t is None else t.children_user + t.children_system


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else 0.0


class Meter:
    """CPU of some processes over a window, as a percentage of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start = time.monotonic()
        self.before = {name: _cpu(p) for name, p in self.procs.items()}

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        return {name: (_cpu(p) - self.before[name]) / wall * 100 for name, p in self.procs.items()}


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system
