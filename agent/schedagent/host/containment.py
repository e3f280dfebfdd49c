"""Where a job runs: its own cgroup where this agent can write one, else its own process group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from pathlib import Path
from typing import Protocol

from schedagent.errors import ContainmentError
from schedagent.host import cgroups
from schedagent.host.cgroups import Layout
from schedagent.host.jobcgroup import Ending, JobCgroup, Limits
from schedagent.host.jobslice import JOBS_SLICE
from schedagent.host.jobunit import JobUnit, Resume, bounding_set
from schedagent.host.systemd_bus import SystemdBus, UnitManager, own_unit, systemd_booted

log = logging.getLogger(__name__)

ATTEMPT_DIR_RE = re.compile(r"^job-([0-9a-f]{20})-([0-9]+)$")  # as the worker names them
OUTPUT_SUBDIR = "output"  # under the state directory: job units' output files
DEFAULT_STATE_DIR = "/var/lib/schedagent"

__all__ = ["ChildGroup", "Containment", "Ending", "JobGroup", "Limits", "ProcessGroup"]


class JobGroup(Protocol):
    """An attempt's processes, whichever way they are held together."""

    pid: int | None

    def signal(self, sig: signal.Signals) -> None: ...

    def kill(self) -> None: ...

    async def close(self) -> Ending: ...


class ChildGroup(JobGroup, Protocol):
    """A group the agent's own child joins (a cgroup, a process group), as opposed to
    a unit whose process systemd starts."""

    gated: bool  # the child must wait at a gate until join() has placed it

    async def join(self, pid: int) -> None: ...


class ProcessGroup:
    """The fallback: the job's shell leads a session and process group of its own; what
    leaves it (setsid) is out of reach, and nothing is limited or accounted."""

    gated = False

    def __init__(self) -> None:
        self.pid: int | None = None

    async def join(self, pid: int) -> None:
        self.pid = pid  # Child.spawn made it a session leader: its PID names the group

    def signal(self, sig: signal.Signals) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def close(self) -> Ending:
        self.kill()
        return Ending({})


class Containment:
    """Makes each attempt's JobGroup: a cgroup in the layout found at start, or, with no
    writable hierarchy (or cgroups turned off), a process group."""

    def __init__(self, layout: Layout | None) -> None:
        self.layout = layout
        # Set by use_systemd(): each attempt in transient units instead of the layout.
        self.units: UnitManager | None = None
        self.agent_unit: str | None = None  # the agent's own unit: restarting or stopping?
        self.output_dir = Path(DEFAULT_STATE_DIR, OUTPUT_SUBDIR)
        self.bounding_set = 0  # the agent's capability bounding set, kept by its jobs
        self._unified_memory = False  # whether systemd's MemorySwapMax= takes effect

    @classmethod
    def setup(cls, node: str, use_cgroups: bool, proc: Path = Path("/proc/self")) -> Containment:
        layout = cgroups.discover(node, proc) if use_cgroups else None
        if layout is None:
            why = "turned off (containment.cgroups)" if not use_cgroups else "none writable"
            log.warning(
                "cgroups %s: jobs run in process groups; --memory and --tasks are refused, "
                "--cpus only reserves placement, and a process that leaves its group "
                "(setsid) outlives the job",
                why,
            )
        else:
            log.info("job cgroups: %s", layout.describe())
            if layout.source("cpu") is None:
                log.warning("no writable cpu controller: --cpus only reserves placement here")
        return cls(layout)

    async def use_systemd(self, proc: Path = Path("/proc/self")) -> None:
        """Run each attempt in transient systemd units when systemd is PID 1 and will
        take them from this agent (root: without polkit, systemd refuses anyone else)."""
        if not systemd_booted():
            return
        if os.geteuid() != 0:
            log.info("systemd is PID 1 but this agent is not root: no transient units for jobs")
            return
        # systemd's StateDirectory= (the package's unit): output files outlive a restart.
        state_dir = os.environ.get("STATE_DIRECTORY", DEFAULT_STATE_DIR).split(":")[0]
        self.output_dir = Path(state_dir, OUTPUT_SUBDIR)
        try:
            self.output_dir.mkdir(mode=0o750, exist_ok=True)
        except OSError as exc:
            log.warning(
                "no transient units for jobs (no %s: %s): %s",
                self.output_dir,
                exc.strerror,
                self._fallback(),
            )
            return
        try:
            self.units = await SystemdBus.connect()
        except ContainmentError as exc:
            log.warning("no transient units for jobs (%s): %s", exc, self._fallback())
            return
        self.bounding_set = bounding_set(proc / "status")
        with contextlib.suppress(OSError):
            self.agent_unit = own_unit((proc / "cgroup").read_text())
            self._unified_memory = "memory" in _unified_root_controllers(proc)
        log.info(
            "job units: a slice and a service per attempt under %s, output in %s, "
            "handed over when systemd restarts %s (instead of %s)",
            JOBS_SLICE,
            self.output_dir,
            self.agent_unit or "this agent's unit (none: jobs are never handed over)",
            self._fallback(),
        )

    def _fallback(self) -> str:
        return "process groups" if self.layout is None else "cgroups"

    def refusal(self, limits: Limits) -> str | None:
        """Why an attempt with these limits cannot run here, or None."""
        if self.units is not None:
            return self._systemd_refusal(limits)
        missing = []
        if limits.memory is not None and not self._can("memory"):
            missing.append("--memory (no writable memory controller)")
        if limits.tasks is not None and not self._can("pids"):
            missing.append("--tasks (no writable pids controller)")
        if limits.memory is not None and self._can("memory") and not self._swap_bounded():
            missing.append("--memory (swap is on and the memory controller cannot limit it)")
        if not missing:
            return None
        return f"cannot enforce {' and '.join(missing)} on this node"

    def _systemd_refusal(self, limits: Limits) -> str | None:
        # On a hybrid host systemd applies MemoryMax= as v1 MemoryLimit= and ignores
        # MemorySwapMax=: the limit would not bound swap.
        if limits.memory is None or self._unified_memory or _no_swap():
            return None
        return "cannot enforce --memory (swap is on and systemd cannot limit it here) on this node"

    async def group(self, name: str, limits: Limits) -> ChildGroup | JobUnit:
        """The attempt's group, its cgroup made with its limits; ContainmentError if a
        limit cannot be enforced here (before anything runs)."""
        refusal = self.refusal(limits)
        if refusal is not None:
            raise ContainmentError(refusal)
        attempt = ATTEMPT_DIR_RE.match(name)
        if self.units is not None and attempt is not None:
            return JobUnit(
                self.units,
                attempt[1],
                int(attempt[2]),
                limits,
                self.output_dir,
                self.bounding_set,
            )
        if self.layout is None:
            return ProcessGroup()
        cpus = limits.cpus if self._can("cpu") else None
        group = JobCgroup(self.layout, name, Limits(limits.memory, limits.tasks, cpus))
        # In a thread: a cgroup's mkdir can take the kernel a millisecond of waiting.
        await asyncio.to_thread(group.create)
        return group

    async def stop_all_jobs(self) -> None:
        """Kill and stop every job unit on this host (schedagent-jobs.slice) and remove
        their output files: at a start with nothing handed over, whatever is there was
        left by an agent gone (its content was handed on, or lost with that agent)."""
        if self.units is None:
            return
        try:
            await self.units.kill(JOBS_SLICE, signal.SIGKILL)
            await self.units.stop(JOBS_SLICE)
            # Killed units stay loaded, failed, until reset (the last agent's
            # ExecStopPost= killed them): nothing of those jobs is left to show.
            await self.units.reset_failed_matching(["schedjob-*.service", "schedagent-jobs-*"])
        except ContainmentError as exc:
            log.warning("cannot stop %s: %s", JOBS_SLICE, exc)
        with contextlib.suppress(OSError):
            for leftover in self.output_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    async def stop_leftover(self, job_id: str, attempt: int) -> None:
        """Kill and stop an attempt's units an earlier agent left running."""
        if self.units is None:
            return
        unit = JobUnit(self.units, job_id, attempt, Limits(), self.output_dir, self.bounding_set)
        with contextlib.suppress(ContainmentError):
            await unit.attach(Resume(0, 0))
        await unit.close()

    async def remove_leftover(self, name: str) -> int:
        """Kill and remove an attempt's cgroup a previous incarnation left behind; how
        many processes it still held."""
        if self.layout is None:
            return 0
        group = JobCgroup.left_behind(self.layout, name)
        if group is None:
            return 0
        count = len(group.members())
        await group.close()
        return count

    def leftovers(self) -> set[tuple[str, int]]:
        """(job id, attempt) of every attempt cgroup under this agent's bases: at start,
        before anything runs, each is left by an earlier incarnation (or by another
        agent of the same name on this host: the caller asks the records)."""
        found: set[tuple[str, int]] = set()
        for base in self._bases():
            with contextlib.suppress(OSError):
                for name in os.listdir(base):
                    match = ATTEMPT_DIR_RE.match(name)
                    if match is not None:
                        found.add((match[1], int(match[2])))
        return found

    async def close(self) -> None:
        """Remove this agent's (empty) base directories; leave the system bus."""
        if self.units is not None:
            await self.units.close()
            self.units = None
        for base in self._bases():
            with contextlib.suppress(OSError):  # a job's cgroup left behind keeps it
                base.rmdir()

    def _bases(self) -> set[Path]:
        if self.layout is None:
            return set()
        bases = {h.base for h in self.layout.v1.values()}
        return bases | ({self.layout.unified.base} if self.layout.unified is not None else set())

    def _can(self, controller: str) -> bool:
        return self.layout is not None and self.layout.source(controller) is not None

    def _swap_bounded(self) -> bool:
        """Whether a memory limit also bounds swap: no swap, or a swap limit to set."""
        source = self.layout.source("memory") if self.layout is not None else None
        if source is None:
            return False
        swap_limit = "memory.swap.max" if source.unified else "memory.memsw.limit_in_bytes"
        return source.has(swap_limit) or _no_swap()


def _unified_root_controllers(proc: Path) -> list[str]:
    """The controllers of the cgroup2 hierarchy's root (none on a hybrid host)."""
    for mount in cgroups.parse_mountinfo((proc / "mountinfo").read_text()):
        if mount.key == cgroups.UNIFIED and mount.root == "/":
            with contextlib.suppress(OSError):
                return (mount.point / "cgroup.controllers").read_text().split()
    return []


def _no_swap(meminfo: Path = Path("/proc/meminfo")) -> bool:
    with contextlib.suppress(OSError, ValueError):
        for line in meminfo.read_text().splitlines():
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) == 0
    return False
