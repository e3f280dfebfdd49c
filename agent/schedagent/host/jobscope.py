"""One attempt as transient systemd units: a slice holding its limits, a scope for its shell."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from schedagent.errors import ContainmentError
from schedagent.host import cgroups
from schedagent.host.cgroups import Hierarchy, Layout
from schedagent.host.jobcgroup import Ending, JobCgroup, Limits
from schedagent.host.systemd_bus import Property, UnitManager

log = logging.getLogger(__name__)

JOBS_SLICE = "schedagent-jobs.slice"
CPU_QUOTA_MIN_USEC = 10_000  # CPUQuota= is in percent: 1 % of a CPU is the least
GONE_TIMEOUT = 10.0  # seconds a killed scope may take to go before it is left to systemd
GONE_POLL = 0.01


def unit_names(job_id: str, attempt: int) -> tuple[str, str]:
    """The attempt's slice (under schedagent-jobs.slice: a dash is a level) and scope."""
    return f"schedagent-jobs-{job_id}_{attempt}.slice", f"schedjob-{job_id}-{attempt}.scope"


def slice_path(name: str) -> str:
    """A slice's cgroup path, as systemd.slice(5) lays it out: a-b-c.slice is
    /a.slice/a-b.slice/a-b-c.slice."""
    parts = name.removesuffix(".slice").split("-")
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def slice_properties(description: str, limits: Limits, bound_to: str | None) -> list[Property]:
    """The attempt's slice: every limit, and accounting that outlives the scope (the
    slice's cgroup keeps its dead children's CPU time, peak memory and OOM kills).
    BindsTo + Before the agent's unit: if the agent dies the slice, and every process
    in it, is stopped; a planned stop of the agent stops it only after the agent has
    drained (units ordered Before= a unit stop after it)."""
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
    if bound_to is not None:
        props += [("BindsTo", "as", [bound_to]), ("Before", "as", [bound_to])]
    return props


def scope_properties(description: str, slice_name: str, pid: int) -> list[Property]:
    """The scope adopts the gated shell (still at its gate: nothing of the job runs yet)."""
    return [
        ("Description", "s", description),
        ("Slice", "s", slice_name),
        ("PIDs", "au", [pid]),
        # A stop (the slice's, systemd's) kills at once: the agent's kill_grace has
        # been given already by the time anything stops the unit.
        ("SendSIGKILL", "b", True),
    ]


class JobScope:
    """An attempt in its own slice and scope; systemd moves, limits, kills and accounts."""

    gated = True  # the child waits at its gate until the scope has adopted it

    def __init__(
        self, units: UnitManager, job_id: str, attempt: int, limits: Limits, bound_to: str | None
    ) -> None:
        self.units = units
        self.limits = limits
        self.bound_to = bound_to
        self.pid: int | None = None
        self.slice, self.scope = unit_names(job_id, attempt)
        self.description = f"schedagent job {job_id} attempt {attempt}"
        self._slice_up = self._scope_up = False

    async def join(self, pid: int) -> None:
        """The slice with its limits, then the scope adopting pid; ContainmentError if
        systemd refuses either (the caller kills the child at its gate)."""
        self.pid = pid
        props = slice_properties(self.description, self.limits, self.bound_to)
        await self.units.start_transient(self.slice, props)
        self._slice_up = True
        unapplied = await asyncio.to_thread(unapplied_limits, self.slice, self.limits)
        if unapplied:
            # systemd accepts MemoryMax= even where it cannot write the controller (an
            # nspawn host whose v1 hierarchies are read-only): never run unlimited.
            raise ContainmentError(f"cannot enforce {unapplied} (systemd did not apply it) here")
        props = scope_properties(self.description, self.slice, pid)
        await self.units.start_transient(self.scope, props)
        self._scope_up = True

    def signal(self, sig: signal.Signals) -> None:
        """sig to every process of the scope, escaped sessions and daemons too."""
        if self._scope_up:
            self.units.kill_soon(self.scope, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def close(self) -> Ending:
        """Kill what is left, wait for the scope to go, read the slice's accounting,
        stop the slice."""
        if not self._slice_up:
            return Ending({})
        try:
            if self._scope_up:
                await self._kill_and_wait()
            return await asyncio.to_thread(read_ending, self.slice)
        finally:
            await self.units.stop(self.slice)

    async def _kill_and_wait(self) -> None:
        deadline = time.monotonic() + GONE_TIMEOUT
        await self.units.kill(self.scope, signal.SIGKILL)
        while await self.units.is_loaded(self.scope):
            if time.monotonic() > deadline:
                log.warning("%s still there %gs after SIGKILL", self.scope, GONE_TIMEOUT)
                return
            await asyncio.sleep(GONE_POLL)


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
