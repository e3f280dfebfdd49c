"""What this host can give to jobs: usable CPUs (affinity and cgroup quota), memory, load."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil


@dataclasses.dataclass(frozen=True)
class Capacity:
    cpus: float
    memory_total: int
    memory_available: int
    load: tuple[float, float, float]


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float:
    """CPUs this process may use: its affinity set, capped by a cgroup CPU quota."""
    try:
        cpus = float(len(psutil.Process().cpu_affinity() or []) or (os.cpu_count() or 1))
    except (AttributeError, OSError):  # cpu_affinity is absent on some platforms
        cpus = float(os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    return min(cpus, quota) if quota is not None else cpus


def cgroup_cpu_quota(root: Path) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 cpu.max or v1 cfs), or None."""
    for path in _own_cgroup_dirs(root):
        quota = _v2_quota(path / "cpu.max")
        if quota is None:
            quota = _v1_quota(path)
        if quota is not None:
            return quota
    return None


def _own_cgroup_dirs(root: Path) -> list[Path]:
    dirs = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers in ("", "cpu,cpuacct", "cpu", "cpuacct,cpu"):
            base = root if controllers == "" else root / controllers
            dirs.append(base / rel.lstrip("/"))
            dirs.append(base)
    return dirs


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(int(quota) / int(period), 0.01)


def _v1_quota(path: Path) -> float | None:
    try:
        quota = int((path / "cpu.cfs_quota_us").read_text())
        period = int((path / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(quota / period, 0.01)


def measure(cpus_override: float | None = None) -> Capacity:
    mem = psutil.virtual_memory()
    load = os.getloadavg()
    return Capacity(
        cpus=cpus_override if cpus_override is not None else usable_cpus(),
        memory_total=int(mem.total),
        memory_available=int(mem.available),
        load=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
    )
