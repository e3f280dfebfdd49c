"""One attempt's cgroups: made with its limits, joined before it runs, killed whole, removed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from schedagent.core.sizes import format_size
from schedagent.errors import ContainmentError
from schedagent.host.cgroups import Hierarchy, Layout

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000
EMPTY_TIMEOUT = 10.0  # seconds a killed cgroup may take to empty before it is left behind
EMPTY_POLL = 0.005


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one attempt may use; None: no limit of that kind."""

    memory: int | None = None  # bytes, swap excluded (the job gets none)
    tasks: int | None = None  # processes and threads
    cpus: float | None = None  # a CPU quota, in CPUs


@dataclasses.dataclass(frozen=True)
class Ending:
    """What an attempt's cgroup says once it is over."""

    usage: dict[str, float]  # cpu_seconds, memory_peak, io_read_bytes, io_write_bytes
    oom_kills: int = 0

    def oom_reason(self, limits: Limits) -> str | None:
        if not self.oom_kills:
            return None
        if limits.memory is None:
            return "out of memory"
        return f"out of memory (limit {format_size(limits.memory)})"


class JobCgroup:
    """An attempt's directory in each hierarchy it needs (the cgroup2 one and, on a
    hybrid host, the v1 ones of the controllers cgroup2 lacks)."""

    gated = True  # the child waits at its gate until join() has placed it

    def __init__(self, layout: Layout, name: str, limits: Limits) -> None:
        self.layout = layout
        self.limits = limits
        self.pid: int | None = None
        self.dirs: dict[str, Path] = {}  # hierarchy key -> this attempt's directory
        for hierarchy in _needed(layout, limits):
            self.dirs.setdefault(hierarchy.key, hierarchy.base / name)

    def create(self) -> None:
        """Make the directories and write the limits; ContainmentError (all removed) if
        a limit cannot be written."""
        try:
            for path in self.dirs.values():
                path.mkdir(exist_ok=True)
            self._write_limits()
        except OSError as exc:
            self.remove()
            raise ContainmentError(f"cannot set up its cgroup: {exc}") from None

    def join(self, pid: int) -> None:
        """Move the (gated, not yet running) child into every directory; OSError if not."""
        self.pid = pid
        for path in self.dirs.values():
            (path / "cgroup.procs").write_text(str(pid))

    def members(self) -> list[int]:
        """The PIDs in the attempt's cgroup (the same in each of its hierarchies)."""
        first = next(iter(self.dirs.values()))
        with contextlib.suppress(OSError):
            return [int(p) for p in (first / "cgroup.procs").read_text().split()]
        return []

    def signal(self, sig: signal.Signals) -> None:
        """Send sig to every process of the attempt, escaped sessions included."""
        if sig == signal.SIGKILL:
            self.kill()
            return
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL everything in the cgroup: cgroup.kill where the kernel has it (no fork
        can slip past), else every listed PID while frozen."""
        unified = self.dirs.get("")
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (unified / "cgroup.kill").write_text("1")
                return
        with self._frozen():
            for pid in self.members():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """Frozen while its PIDs are killed one by one, so that none forks meanwhile."""
        freeze = self._freezer()
        if freeze is not None:
            with contextlib.suppress(OSError):
                freeze[0].write_text(freeze[1])
        try:
            yield
        finally:
            if freeze is not None:
                with contextlib.suppress(OSError):
                    freeze[0].write_text(freeze[2])

    def _freezer(self) -> tuple[Path, str, str] | None:
        """(file, freeze, thaw): cgroup2's cgroup.freeze, else the v1 freezer's state."""
        unified = self.dirs.get("")
        if unified is not None and (unified / "cgroup.freeze").exists():
            return unified / "cgroup.freeze", "1", "0"
        freezer = self.dir_of("freezer")
        if freezer is not None:
            return freezer / "freezer.state", "FROZEN", "THAWED"
        return None

    async def close(self) -> Ending:
        """Kill what is left, wait for the cgroup to empty, read its accounting, remove it."""
        deadline = time.monotonic() + EMPTY_TIMEOUT
        while True:
            self.kill()
            if not self.members():
                break
            if time.monotonic() > deadline:
                log.warning("cgroup %s still holds %s after a kill", self.dirs, self.members())
                break
            await asyncio.sleep(EMPTY_POLL)
        ending = self.read()
        self.remove()
        return ending

    def read(self) -> Ending:
        usage: dict[str, float] = {}
        _cpu_seconds(self, usage)
        oom_kills = _memory(self, usage)
        _io_bytes(self, usage)
        return Ending(usage, oom_kills)

    def remove(self) -> None:
        for path in self.dirs.values():
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove cgroup %s: %s", path, exc)

    def dir_of(self, controller: str) -> Path | None:
        """This attempt's directory in the hierarchy that gives `controller`."""
        source = self.layout.source(controller)
        return None if source is None else self.dirs.get(source.key)

    def _write_limits(self) -> None:
        limits = self.limits
        if limits.memory is not None:
            _limit_memory(self.dir_of("memory"), limits.memory)
        if limits.tasks is not None:
            _write(self.dir_of("pids"), "pids.max", str(limits.tasks))
        cpu = self.dir_of("cpu")
        if limits.cpus is not None and cpu is not None:
            quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
            if (cpu / "cpu.max").exists():
                _write(cpu, "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(cpu, "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu, "cpu.cfs_quota_us", str(quota))


def _needed(layout: Layout, limits: Limits) -> list[Hierarchy]:
    """The hierarchies an attempt joins: cgroup2 (membership, kill, CPU time) and the v1
    ones for its limits and accounting; with no cgroup2, a v1 one to kill it by."""
    needed = [] if layout.unified is None else [layout.unified]
    wanted = ["memory", "io"]
    wanted += ["cpu"] if limits.cpus is not None else []
    wanted += ["pids"] if limits.tasks is not None else []
    for controller in wanted:
        source = layout.source(controller)
        if source is not None:
            needed.append(source)
    if layout.unified is None:
        needed += [layout.v1[n] for n in ("cpuacct", "freezer") if n in layout.v1]
    if not needed:
        needed.append(next(iter(layout.v1.values())))
    return needed


def _write(directory: Path | None, name: str, value: str) -> None:
    if directory is None:  # pragma: no cover - refused before (Containment.check)
        raise ContainmentError(f"no cgroup directory for {name}")
    (directory / name).write_text(value)


def _limit_memory(directory: Path | None, limit: int) -> None:
    """The limit, and no swap beyond it: the job's memory is what it is given."""
    if directory is not None and (directory / "memory.max").exists():
        _write(directory, "memory.max", str(limit))
        if (directory / "memory.swap.max").exists():
            _write(directory, "memory.swap.max", "0")
        return
    _write(directory, "memory.limit_in_bytes", str(limit))
    if directory is not None and (directory / "memory.memsw.limit_in_bytes").exists():
        _write(directory, "memory.memsw.limit_in_bytes", str(limit))


def _cpu_seconds(group: JobCgroup, usage: dict[str, float]) -> None:
    unified = group.dirs.get("")
    stat = _keyed(unified / "cpu.stat") if unified is not None else {}
    if "usage_usec" in stat:
        usage["cpu_seconds"] = stat["usage_usec"] / 1e6
        return
    cpuacct = group.dir_of("cpuacct")
    nanoseconds = _number(cpuacct / "cpuacct.usage") if cpuacct is not None else None
    if nanoseconds is not None:
        usage["cpu_seconds"] = nanoseconds / 1e9


def _memory(group: JobCgroup, usage: dict[str, float]) -> int:
    """Peak memory into usage; the number of OOM kills in the cgroup."""
    directory = group.dir_of("memory")
    if directory is None:
        return 0
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        peak = _number(directory / name)
        if peak is not None:
            usage["memory_peak"] = peak
            break
    for name in ("memory.events", "memory.oom_control"):
        events = _keyed(directory / name)
        if "oom_kill" in events:
            return events["oom_kill"]
    return 0


def _io_bytes(group: JobCgroup, usage: dict[str, float]) -> None:
    directory = group.dir_of("io")
    if directory is None:
        return
    read = written = 0
    try:
        if (directory / "io.stat").exists():
            for line in (directory / "io.stat").read_text().splitlines():
                fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                read += int(fields.get("rbytes", 0))
                written += int(fields.get("wbytes", 0))
        else:
            text = (directory / "blkio.throttle.io_service_bytes").read_text()
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in ("Read", "Write"):
                    read += int(parts[2]) if parts[1] == "Read" else 0
                    written += int(parts[2]) if parts[1] == "Write" else 0
    except (OSError, ValueError):
        return
    usage["io_read_bytes"], usage["io_write_bytes"] = read, written


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" lines) as a dict."""
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
    except OSError:
        pass
    return values
