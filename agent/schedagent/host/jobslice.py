"""An attempt's transient slice: its limits, their check, and the accounting in its cgroup."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from schedagent.host import cgroups
from schedagent.host.cgroups import Hierarchy, Layout
from schedagent.host.jobcgroup import Ending, JobCgroup, Limits
from schedagent.host.systemd_bus import Property

log = logging.getLogger(__name__)

JOBS_SLICE = "schedagent-jobs.slice"
CPU_QUOTA_MIN_USEC = 10_000  # CPUQuota= is in percent: 1 % of a CPU is the least


def unit_names(job_id: str, attempt: int) -> tuple[str, str]:
    """The attempt's slice (under schedagent-jobs.slice: a dash is a level) and service."""
    return f"schedagent-jobs-{job_id}_{attempt}.slice", f"schedjob-{job_id}-{attempt}.service"


def slice_path(name: str) -> str:
    """A slice's cgroup path, as systemd.slice(5) lays it out: a-b-c.slice is
    /a.slice/a-b.slice/a-b-c.slice."""
    parts = name.removesuffix(".slice").split("-")
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def slice_properties(description: str, limits: Limits) -> list[Property]:
    """The attempt's slice: every limit, and accounting that outlives the service (the
    slice's cgroup keeps its dead children's CPU time, peak memory and OOM kills).
    Bound to nothing: the job may outlive the agent (a restart hands it over); the
    agent's ExecStopPost= and the guard timer stop it when no agent will take it."""
    props: list[Property] = [
        ("Description", "s", description),
        ("MemoryAccounting", "b", True),
        ("CPUAccounting", "b", True),
        ("TasksAccounting", "b", True),
        ("IOAccounting", "b", True),
    ]
    if limits.memory is not None:
        props += [("MemoryMax", "t", limits.memory), ("MemorySwapMax", "t", 0)]
    if limits.cpus is not None:
        quota = max(CPU_QUOTA_MIN_USEC, round(limits.cpus * 1_000_000))
        props.append(("CPUQuotaPerSecUSec", "t", quota))
    if limits.tasks is not None:
        props.append(("TasksMax", "t", limits.tasks))
    return props


def read_ending(slice_name: str, proc: Path = Path("/proc/self")) -> Ending:
    """The slice's CPU time, peak memory, I/O and OOM kills, read from its cgroup
    (read-only access is enough: ProtectControlGroups= may stay on)."""
    try:
        mounts = cgroups.parse_mountinfo((proc / "mountinfo").read_text())
    except OSError as exc:
        log.warning("cannot read %s/mountinfo for %s's accounting: %s", proc, slice_name, exc)
        return Ending({})
    layout = slice_layout(mounts, slice_path(slice_name))
    group = None if layout is None else JobCgroup.left_behind(layout, slice_name)
    return Ending({}) if group is None else group.read()


# What shows a limit applied, per hierarchy kind: (controller, file, unlimited value).
LIMIT_FILES = {
    "--memory": [("memory", "memory.max", "max"), ("memory", "memory.limit_in_bytes", "")],
    "--tasks": [("pids", "pids.max", "max")],
}


def unapplied_limits(slice_name: str, limits: Limits, proc: Path = Path("/proc/self")) -> str:
    """The limits (--memory, --tasks) the slice's cgroup does not show, " and "-joined;
    "" if all are there. (--cpus is not checked: a CPU quota is a bonus to its
    reservation, as on the cgroup path, and refusing it would refuse every job.)"""
    asked = (("--memory", limits.memory), ("--tasks", limits.tasks))
    wanted = [name for name, value in asked if value is not None]
    if not wanted:
        return ""
    try:
        mounts = cgroups.parse_mountinfo((proc / "mountinfo").read_text())
    except OSError:
        return " and ".join(wanted)
    layout = slice_layout(mounts, slice_path(slice_name))
    group = None if layout is None else JobCgroup.left_behind(layout, slice_name)
    return " and ".join(n for n in wanted if group is None or not _applied(group, n))


def _applied(group: JobCgroup, limit: str) -> bool:
    for controller, name, unlimited in LIMIT_FILES[limit]:
        path = group.file(controller, name)
        if path is None:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            value = path.read_text().split()[0]
            return value != unlimited and int(value) < 1 << 62  # v1's unlimited is ~2^63
    return False


def slice_layout(mounts: Sequence[cgroups.Mount], path: str) -> Layout | None:
    """A Layout whose bases are the slice's parent in each hierarchy that shows it
    whole (mounted from its root), for JobCgroup's readers."""
    parent, _, name = path.rpartition("/")
    unified: Hierarchy | None = None
    v1: dict[str, Hierarchy] = {}
    for mount in mounts:
        base = mount.point / parent.lstrip("/")
        files = _listing(base / name) if mount.root == "/" else None
        if files is None:
            continue
        if mount.key == cgroups.UNIFIED:
            controllers = frozenset(_words(base / name / "cgroup.controllers"))
            unified = Hierarchy(cgroups.UNIFIED, base, controllers, files)
            continue
        controllers = frozenset(mount.key.split(","))
        for controller in controllers & {"memory", "cpuacct", "pids"}:
            v1[controller] = Hierarchy(mount.key, base, controllers, files)
    if unified is None and not v1:
        return None
    return Layout(unified, v1)


def _listing(path: Path) -> frozenset[str] | None:
    try:
        return frozenset(p.name for p in path.iterdir())
    except OSError:
        return None


def _words(path: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text().split()
    return []
