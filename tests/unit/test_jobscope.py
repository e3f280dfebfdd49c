"""Transient units per attempt: their properties, the D-Bus exchange, and a job run through them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType

from schedagent.errors import ContainmentError
from schedagent.host import jobscope
from schedagent.host.containment import Containment, Limits
from schedagent.host.jobscope import (
    JobScope,
    read_ending,
    scope_properties,
    slice_path,
    slice_properties,
    unapplied_limits,
    unit_names,
)
from schedagent.host.runner import Command, job_environment, run_command
from schedagent.host.systemd_bus import Property, SystemdBus, own_unit

JOB = "0123456789abcdef0123"


def as_dict(props: Sequence[Property]) -> dict[str, tuple[str, Any]]:
    return {name: (sig, value) for name, sig, value in props}


def test_the_slice_carries_every_limit_and_binds_to_the_agent() -> None:
    props = as_dict(slice_properties("d", Limits(64 << 20, 50, 0.5), "schedagent.service"))
    assert props["MemoryMax"] == ("t", 64 << 20)
    assert props["MemorySwapMax"] == ("t", 0)  # the job's memory is what it is given
    assert props["CPUQuotaPerSecUSec"] == ("t", 500_000)  # CPUQuota=50%
    assert props["TasksMax"] == ("t", 50)
    assert props["BindsTo"] == props["Before"] == ("as", ["schedagent.service"])
    for accounting in ("Memory", "CPU", "Tasks", "IO"):
        assert props[f"{accounting}Accounting"] == ("b", True)


def test_a_slice_without_limits_only_accounts() -> None:
    props = as_dict(slice_properties("d", Limits(), None))
    assert not {"MemoryMax", "MemorySwapMax", "CPUQuotaPerSecUSec", "TasksMax"} & set(props)
    assert "BindsTo" not in props
    tiny = as_dict(slice_properties("d", Limits(cpus=0.001), None))
    assert tiny["CPUQuotaPerSecUSec"] == ("t", 10_000)  # 1 %: systemd's least


def test_names_and_the_slice_path() -> None:
    assert unit_names(JOB, 2) == (f"schedagent-jobs-{JOB}_2.slice", f"schedjob-{JOB}-2.scope")
    assert slice_path(f"schedagent-jobs-{JOB}_2.slice") == (
        f"/schedagent.slice/schedagent-jobs.slice/schedagent-jobs-{JOB}_2.slice"
    )
    props = as_dict(scope_properties("d", "x.slice", 42))
    assert props["PIDs"] == ("au", [42]) and props["Slice"] == ("s", "x.slice")


def test_the_agents_own_unit() -> None:
    assert own_unit("1:name=systemd:/x\n0::/system.slice/schedagent.service\n") == (
        "schedagent.service"
    )
    assert own_unit("0::/user.slice/user-0.slice/session-3.scope\n") == "session-3.scope"
    assert own_unit("0::/\n") is None


class FakeUnits:
    """systemd as far as JobScope uses it: a scope adopts PIDs, a kill signals them,
    and the scope is gone once they are."""

    def __init__(self, refuse: str | None = None, mark: Path | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.started: dict[str, dict[str, tuple[str, Any]]] = {}
        self.refuse = refuse
        self.mark = mark  # a file the job makes first: whether it had, when adopted
        self.ran_before_adoption: bool | None = None

    async def start_transient(self, name: str, properties: Sequence[Property]) -> None:
        self.calls.append(("start", name))
        if name == self.refuse:
            raise ContainmentError(f"systemd could not start {name}: failed")
        self.started[name] = as_dict(properties)
        if self.pids(name) and self.mark is not None:
            await asyncio.sleep(0.2)  # time for an ungated child to get there
            self.ran_before_adoption = self.mark.exists()

    def pids(self, name: str) -> list[int]:
        return list(self.started.get(name, {}).get("PIDs", ("au", []))[1])

    def kill_soon(self, name: str, sig: int) -> None:
        self.calls.append(("kill", f"{name} {signal.Signals(sig).name}"))
        for pid in self.pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)  # the fake's whole unit: the shell's session

    async def kill(self, name: str, sig: int) -> None:
        self.kill_soon(name, sig)

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))

    async def is_loaded(self, name: str) -> bool:
        return any(_alive(pid) for pid in self.pids(name))

    async def close(self) -> None:
        pass


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def systemd_containment(units: FakeUnits) -> Containment:
    containment = Containment(None)
    containment.units, containment.bound_to = units, "schedagent.service"
    return containment


async def run(cmd: str, containment: Containment, limits: Limits | None = None) -> Any:
    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def on_output(stream: str, data: bytes) -> None:
        out[stream] += data

    command = Command(
        cmd=cmd,
        env=job_environment({}, {}),
        cwd=None,
        timeout=None,
        kill_grace=1.0,
        name=f"job-{JOB}-1",
        limits=limits or Limits(),
    )
    outcome = await run_command(command, on_output, asyncio.Event(), containment=containment)
    return outcome, out


async def test_a_job_runs_only_once_its_scope_has_adopted_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobscope, "unapplied_limits", lambda *_: "")  # the fake applies all
    mark = tmp_path / "ran"
    units = FakeUnits(mark=mark)
    outcome, out = await run(f"touch {mark}; echo hi", systemd_containment(units), Limits(1 << 30))
    assert outcome.exit_code == 0 and out["stdout"] == b"hi\n" and mark.exists()
    slice_name, scope = unit_names(JOB, 1)
    assert [c for c in units.calls if c[0] == "start"] == [("start", slice_name), ("start", scope)]
    assert units.started[slice_name]["MemoryMax"] == ("t", 1 << 30)
    assert units.started[slice_name]["BindsTo"] == ("as", ["schedagent.service"])
    # When the scope took it, the child was still at its gate: nothing of the job ran.
    assert units.ran_before_adoption is False
    # Its end: the whole scope killed, then the slice stopped.
    assert units.calls[-2:] == [("kill", f"{scope} SIGKILL"), ("stop", slice_name)]


async def test_a_limit_systemd_did_not_apply_runs_nothing(tmp_path: Path) -> None:
    units = FakeUnits()  # it writes no cgroup: the slice shows no memory limit
    mark = tmp_path / "ran"
    outcome, _ = await run(f"touch {mark}", systemd_containment(units), Limits(memory=1 << 30))
    assert outcome.error == (
        "cannot start: cannot place it in its cgroup: "
        "cannot enforce --memory (systemd did not apply it) here"
    )
    assert not mark.exists()
    slice_name, scope = unit_names(JOB, 1)
    assert ("start", scope) not in units.calls and units.calls[-1] == ("stop", slice_name)


async def test_a_scope_systemd_refuses_runs_nothing(tmp_path: Path) -> None:
    _, scope = unit_names(JOB, 1)
    units = FakeUnits(refuse=scope)
    mark = tmp_path / "ran"
    outcome, _ = await run(f"touch {mark}", systemd_containment(units))
    assert outcome.error == (
        f"cannot start: cannot place it in its cgroup: systemd could not start {scope}: failed"
    )
    assert not mark.exists()
    assert units.calls[-1] == ("stop", unit_names(JOB, 1)[0])  # the slice goes too


async def test_a_forked_daemon_dies_with_the_scope(tmp_path: Path) -> None:
    units = FakeUnits()
    pidfile = tmp_path / "daemon"
    outcome, _ = await run(f"sleep 1000 & echo $! > {pidfile}", systemd_containment(units))
    assert outcome.exit_code == 0
    daemon = int(pidfile.read_text())
    # The scope's SIGKILL is sent, not yet acted on, when the run returns: wait for it
    # (a daemon that escaped the scope lives on, `sleep 1000`, and fails this).
    deadline = asyncio.get_running_loop().time() + 5
    while _alive(daemon) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert not _alive(daemon)


def fake_cgroups(tmp_path: Path, slice_name: str, hybrid: bool) -> Path:
    """A /proc/self with a mountinfo whose cgroup mounts are directories under tmp_path,
    and the slice's cgroup in them with accounting files."""
    unified = tmp_path / ("unified" if hybrid else "cg2")
    memory = tmp_path / "memory"
    lines = [f"30 20 0:26 / {unified} rw - cgroup2 cgroup2 rw"]
    slice_dir = unified / slice_path(slice_name).lstrip("/")
    slice_dir.mkdir(parents=True)
    (slice_dir / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    if hybrid:
        lines.append(f"31 20 0:27 / {memory} rw - cgroup cgroup rw,memory")
        v1 = memory / slice_path(slice_name).lstrip("/")
        v1.mkdir(parents=True)
        (v1 / "memory.max_usage_in_bytes").write_text("4096\n")
        (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    else:
        (slice_dir / "cgroup.controllers").write_text("cpu memory pids\n")
        (slice_dir / "memory.peak").write_text("8192\n")
        (slice_dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    return proc


@pytest.mark.parametrize("hybrid", [False, True])
def test_the_accounting_is_read_from_the_slices_cgroup(tmp_path: Path, hybrid: bool) -> None:
    slice_name = unit_names(JOB, 1)[0]
    ending = read_ending(slice_name, fake_cgroups(tmp_path, slice_name, hybrid))
    assert ending.usage == {"cpu_seconds": 1.5, "memory_peak": 4096 if hybrid else 8192}
    assert ending.oom_reason(Limits(memory=64 << 20)) == "out of memory (limit 64M)"


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_limit_systemd_did_not_apply_is_found(tmp_path: Path, hybrid: bool) -> None:
    slice_name = unit_names(JOB, 1)[0]
    proc = fake_cgroups(tmp_path, slice_name, hybrid)
    limits = Limits(memory=64 << 20, tasks=10)
    # As on an nspawn host whose v1 hierarchies are read-only: no limit written.
    assert unapplied_limits(slice_name, limits, proc) == "--memory and --tasks"
    memory_dir = tmp_path / ("memory" if hybrid else "cg2") / slice_path(slice_name).lstrip("/")
    name = "memory.limit_in_bytes" if hybrid else "memory.max"
    (memory_dir / name).write_text(f"{64 << 20}\n")
    assert unapplied_limits(slice_name, limits, proc) == "--tasks"
    assert unapplied_limits(slice_name, Limits(cpus=0.5), proc) == ""


def test_memory_is_refused_where_systemd_cannot_bound_swap(monkeypatch: Any) -> None:
    from schedagent.host import containment as module

    monkeypatch.setattr(module, "_no_swap", lambda: False)
    containment = systemd_containment(FakeUnits())
    assert containment.refusal(Limits(memory=1 << 30)) == (
        "cannot enforce --memory (swap is on and systemd cannot limit it here) on this node"
    )
    containment._unified_memory = True
    assert containment.refusal(Limits(memory=1 << 30, tasks=5)) is None


class FakeBus:
    """A dbus-fast MessageBus as SystemdBus uses it: replies, then systemd's signal."""

    def __init__(self, job_result: str = "done", error: str | None = None) -> None:
        self.handlers: list[Any] = []
        self.sent: list[Message] = []
        self.job_result, self.error = job_result, error

    def add_message_handler(self, handler: Any) -> None:
        self.handlers.append(handler)

    def send(self, msg: Message) -> None:
        msg.serial = msg.serial or len(self.sent) + 1  # as the bus numbers what it sends
        msg._marshall(False)  # the body fits its signature
        self.sent.append(msg)

    async def call(self, msg: Message) -> Message:
        self.send(msg)
        if self.error is not None:
            return Message.new_error(msg, self.error, "nope")
        if msg.member == "StartTransientUnit":
            signal_msg = Message.new_signal(
                "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "JobRemoved",
                "uoss", [7, "/org/freedesktop/systemd1/job/7", msg.body[0], self.job_result],
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            for handler in self.handlers:
                loop.call_soon(handler, signal_msg)
            return Message.new_method_return(msg, "o", ["/org/freedesktop/systemd1/job/7"])
        return Message.new_method_return(msg)


async def test_the_bus_waits_for_systemds_start_job() -> None:
    bus = FakeBus()
    manager = SystemdBus(bus)  # type: ignore[arg-type]
    props = slice_properties("d", Limits(64 << 20, 10, 1.0), "schedagent.service")
    await manager.start_transient("a.slice", props)
    await manager.start_transient("b.scope", scope_properties("d", "a.slice", os.getpid()))
    assert [m.member for m in bus.sent] == ["StartTransientUnit"] * 2
    manager.kill_soon("b.scope", signal.SIGTERM)
    assert bus.sent[-1].body == ["b.scope", "all", signal.SIGTERM]
    assert bus.sent[-1].message_type is MessageType.METHOD_CALL
    failing = SystemdBus(FakeBus(job_result="failed"))  # type: ignore[arg-type]
    with pytest.raises(ContainmentError, match=r"could not start a\.slice: failed"):
        await failing.start_transient("a.slice", props)


async def test_a_unit_systemd_does_not_know_is_gone() -> None:
    gone = FakeBus(error="org.freedesktop.systemd1.NoSuchUnit")
    manager = SystemdBus(gone)  # type: ignore[arg-type]
    assert await manager.is_loaded("b.scope") is False
    await manager.kill("b.scope", signal.SIGKILL)  # no error: already gone
    denied = FakeBus(error="org.freedesktop.DBus.Error.AccessDenied")
    refused = SystemdBus(denied)  # type: ignore[arg-type]
    with pytest.raises(ContainmentError, match=r"refused StartTransientUnit: .*AccessDenied"):
        await refused.start_transient("a.slice", [])


async def test_a_scope_in_containment_is_what_group_gives() -> None:
    group = await systemd_containment(FakeUnits()).group(f"job-{JOB}-3", Limits())
    assert isinstance(group, JobScope) and group.scope == f"schedjob-{JOB}-3.scope"


def test_a_kill_on_a_bus_that_is_gone_does_not_raise() -> None:
    """The fence and the worker's error path call kill() from code that cannot handle
    an error: close() kills again, and waits, where one can."""

    class GoneBus(FakeBus):
        def send(self, msg: Message) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    SystemdBus(GoneBus()).kill_soon("b.scope", signal.SIGKILL)  # type: ignore[arg-type]
