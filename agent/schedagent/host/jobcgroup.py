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
        unified = layout.unified
        self._kill_file = self._file(unified, "cgroup.kill")
        self._members_file = next(iter(self.dirs.values())) / "cgroup.procs"

    @classmethod
    def left_behind(cls, layout: Layout, name: str) -> JobCgroup | None:
        """An attempt's cgroup found in any hierarchy, whatever limits it had; None if
        there is none."""
        group = cls(layout, name, Limits())
        hierarchies = [*layout.v1.values(), *filter(None, [layout.unified])]
        paths = {h.key: h.base / name for h in hierarchies}
        group.dirs = {key: path for key, path in paths.items() if path.is_dir()}
        if not group.dirs:
            return None
        first = group.dirs.get("") or next(iter(group.dirs.values()))  # cgroup2's if there
        group._members_file = first / "cgroup.procs"
        return group

    def create(self) -> None:
        """Make the directories and write the limits; ContainmentError (all removed) if
        a limit cannot be written."""
        try:
            for path in self.dirs.values():
                # parents: an agent of the same node name may have removed the base
                path.mkdir(parents=True, exist_ok=True)
            self._write_limits()
        except OSError as exc:
            self.remove()
            raise ContainmentError(f"cannot set up its cgroup: {exc}") from None

    async def join(self, pid: int) -> None:
        """Move the (gated, not yet running) child into every directory; OSError if not.
        In a thread: the kernel waits for an RCU grace period on a move (~0.6 ms here),
        which would stall the event loop."""
        self.pid = pid
        await asyncio.to_thread(self._join, pid)

    def _join(self, pid: int) -> None:
        for path in self.dirs.values():
            _put(path / "cgroup.procs", str(pid))

    def members(self) -> list[int]:
        """The PIDs in the attempt's cgroup (the same in each of its hierarchies)."""
        return [int(p) for p in _get(self._members_file).split()]

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
        if self._kill_file is not None:
            with contextlib.suppress(OSError):
                _put(self._kill_file, "1")
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
                _put(freeze[0], freeze[1])
        try:
            yield
        finally:
            if freeze is not None:
                with contextlib.suppress(OSError):
                    _put(freeze[0], freeze[2])

    def _freezer(self) -> tuple[Path, str, str] | None:
        """(file, freeze, thaw): cgroup2's cgroup.freeze, else the v1 freezer's state."""
        unified = self._file(self.layout.unified, "cgroup.freeze")
        if unified is not None:
            return unified, "1", "0"
        freezer = self.layout.v1.get("freezer")
        state = self._file(freezer, "freezer.state")
        return None if state is None else (state, "FROZEN", "THAWED")

    async def close(self) -> Ending:
        """Kill what is left, wait for the cgroup to empty, read its accounting, remove it."""
        deadline = time.monotonic() + EMPTY_TIMEOUT
        while members := self.members():
            if time.monotonic() > deadline:
                log.warning("cgroup %s still holds %s after a kill", self._members_file, members)
                break
            self.kill()
            await asyncio.sleep(EMPTY_POLL)
        return await asyncio.to_thread(self._read_and_remove)

    def _read_and_remove(self) -> Ending:
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

    def file(self, controller: str, name: str) -> Path | None:
        """This attempt's `name` file in the hierarchy giving `controller`, if it has one."""
        return self._file(self.layout.source(controller), name)

    def _file(self, hierarchy: Hierarchy | None, name: str) -> Path | None:
        if hierarchy is None or not hierarchy.has(name) or hierarchy.key not in self.dirs:
            return None
        return self.dirs[hierarchy.key] / name

    def _write_limits(self) -> None:
        limits = self.limits
        if limits.memory is not None:
            self._limit_memory(limits.memory)
        if limits.tasks is not None:
            _put(self._need("pids", "pids.max"), str(limits.tasks))
        if limits.cpus is not None and self.layout.source("cpu") is not None:
            quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
            cpu_max = self.file("cpu", "cpu.max")
            if cpu_max is not None:
                _put(cpu_max, f"{quota} {CPU_PERIOD_US}")
            else:
                # A new cgroup's period is the default, CPU_PERIOD_US: one write less.
                _put(self._need("cpu", "cpu.cfs_quota_us"), str(quota))

    def _limit_memory(self, limit: int) -> None:
        """The limit, and no swap beyond it: the job's memory is what it is given."""
        memory_max = self.file("memory", "memory.max")
        if memory_max is not None:
            _put(memory_max, str(limit))
            swap = self.file("memory", "memory.swap.max")
            if swap is not None:
                _put(swap, "0")
            return
        _put(self._need("memory", "memory.limit_in_bytes"), str(limit))
        memsw = self.file("memory", "memory.memsw.limit_in_bytes")
        if memsw is not None:
            _put(memsw, str(limit))

    def _need(self, controller: str, name: str) -> Path:
        path = self.file(controller, name)
        if path is None:  # Containment.refusal said no before it came to this
            raise ContainmentError(f"its cgroup has no {name}")
        return path


def _needed(layout: Layout, limits: Limits) -> list[Hierarchy]:
    """The hierarchies an attempt joins: cgroup2 (membership, kill, CPU time, and any
    controller it has) and the v1 ones for memory (limit, peak, OOM kills), a CPU quota
    and a task limit; with no cgroup2, v1 ones to account CPU time and to freeze by.
    (A v1 blkio one too would cost each spawn a cgroup more: I/O is read from cgroup2.)"""
    needed = [] if layout.unified is None else [layout.unified]
    wanted = ["memory"]
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


def _put(path: Path, value: str) -> None:
    """One write(2) of value (a cgroup file takes a value per write; no buffering)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _get(path: Path | None) -> str:
    """A cgroup file's text; "" if it cannot be read (gone, or never there)."""
    if path is None:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        return os.read(fd, 65536).decode()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _cpu_seconds(group: JobCgroup, usage: dict[str, float]) -> None:
    stat = _keyed(group._file(group.layout.unified, "cpu.stat"))
    if "usage_usec" in stat:
        usage["cpu_seconds"] = stat["usage_usec"] / 1e6
        return
    nanoseconds = _number(group.file("cpuacct", "cpuacct.usage"))
    if nanoseconds is not None:
        usage["cpu_seconds"] = nanoseconds / 1e9


def _memory(group: JobCgroup, usage: dict[str, float]) -> int:
    """Peak memory into usage; the number of OOM kills in the cgroup."""
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        peak = _number(group.file("memory", name))
        if peak is not None:
            usage["memory_peak"] = peak
            break
    for name in ("memory.events", "memory.oom_control"):
        events = _keyed(group.file("memory", name))
        if "oom_kill" in events:
            return events["oom_kill"]
    return 0


def _io_bytes(group: JobCgroup, usage: dict[str, float]) -> None:
    """Bytes read and written (cgroup2's io.stat, where the io controller is enabled)."""
    path = group.file("io", "io.stat")
    if path is None:
        return
    read = written = 0
    for line in _get(path).splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        with contextlib.suppress(ValueError):
            read += int(fields.get("rbytes", 0))
            written += int(fields.get("wbytes", 0))
    usage["io_read_bytes"], usage["io_write_bytes"] = read, written


def _number(path: Path | None) -> int | None:
    try:
        return int(_get(path).split()[0])
    except (ValueError, IndexError):
        return None


def _keyed(path: Path | None) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" lines) as a dict."""
    values = {}
    for line in _get(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values
