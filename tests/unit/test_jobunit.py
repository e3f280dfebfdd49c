"""Transient units per attempt: their properties, the D-Bus exchange, and a job run through them."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant

from fakeunits import FakeUnits, as_dict
from schedagent.errors import ContainmentError, HandedOver
from schedagent.host import jobunit
from schedagent.host.containment import Containment, Limits
from schedagent.host.jobslice import (
    read_ending,
    slice_path,
    slice_properties,
    unapplied_limits,
    unit_names,
)
from schedagent.host.jobunit import JobUnit, Resume, bounding_set, service_properties
from schedagent.host.runner import Command, job_environment, run_command
from schedagent.host.systemd_bus import ServiceState, SystemdBus, own_unit, unit_path

JOB = "0123456789abcdef0123"


def test_the_slice_carries_every_limit_and_is_bound_to_nothing() -> None:
    props = as_dict(slice_properties("d", Limits(64 << 20, 50, 0.5)))
    assert props["MemoryMax"] == ("t", 64 << 20)
    assert props["MemorySwapMax"] == ("t", 0)  # the job's memory is what it is given
    assert props["CPUQuotaPerSecUSec"] == ("t", 500_000)  # CPUQuota=50%
    assert props["TasksMax"] == ("t", 50)
    # It may outlive the agent (a restart): ExecStopPost= and the guard stop it if need be.
    assert not {"BindsTo", "Before", "PartOf"} & set(props)
    for accounting in ("Memory", "CPU", "Tasks", "IO"):
        assert props[f"{accounting}Accounting"] == ("b", True)


def test_a_slice_without_limits_only_accounts() -> None:
    props = as_dict(slice_properties("d", Limits()))
    assert not {"MemoryMax", "MemorySwapMax", "CPUQuotaPerSecUSec", "TasksMax"} & set(props)
    assert "BindsTo" not in props
    tiny = as_dict(slice_properties("d", Limits(cpus=0.001)))
    assert tiny["CPUQuotaPerSecUSec"] == ("t", 10_000)  # 1 %: systemd's least


def test_names_and_the_slice_path() -> None:
    assert unit_names(JOB, 2) == (f"schedagent-jobs-{JOB}_2.slice", f"schedjob-{JOB}-2.service")
    assert slice_path(f"schedagent-jobs-{JOB}_2.slice") == (
        f"/schedagent.slice/schedagent-jobs.slice/schedagent-jobs-{JOB}_2.slice"
    )


def test_the_agents_own_unit() -> None:
    assert own_unit("1:name=systemd:/x\n0::/system.slice/schedagent.service\n") == (
        "schedagent.service"
    )
    assert own_unit("0::/user.slice/user-0.slice/session-3.scope\n") == "session-3.scope"
    assert own_unit("0::/\n") is None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def systemd_containment(units: FakeUnits, output_dir: Path) -> Containment:
    containment = Containment(None)
    containment.units, containment.agent_unit = units, "schedagent.service"
    output_dir.mkdir(exist_ok=True)
    containment.output_dir = output_dir
    return containment


async def run(
    cmd: str,
    containment: Containment,
    limits: Limits | None = None,
    cancel: asyncio.Event | None = None,
    timeout: float | None = None,
) -> Any:
    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def on_output(stream: str, data: bytes) -> None:
        out[stream] += data

    command = Command(
        cmd=cmd,
        env=job_environment({}, {}),
        cwd=None,
        timeout=timeout,
        kill_grace=0.3,
        name=f"job-{JOB}-1",
        limits=limits or Limits(),
    )
    cancel = cancel or asyncio.Event()
    outcome = await run_command(command, on_output, cancel, containment=containment)
    return outcome, out


async def test_a_job_runs_as_a_service_in_its_slice(tmp_path: Path) -> None:
    units = FakeUnits()
    outcome, out = await run("echo hi; echo oops >&2", systemd_containment(units, tmp_path))
    assert outcome.exit_code == 0 and outcome.error is None
    assert out == {"stdout": b"hi\n", "stderr": b"oops\n"}
    slice_name, service = unit_names(JOB, 1)
    assert [c for c in units.calls if c[0] == "start"] == [
        ("start", slice_name),
        ("start", service),
    ]
    props = units.started[service]
    assert props["Slice"] == ("s", slice_name) and props["Type"] == ("s", "exec")
    assert props["RemainAfterExit"] == ("b", True)
    # Its end: whatever is left killed, the service stopped, then the slice.
    assert units.calls[-3:] == [
        ("kill", f"{service} SIGKILL"), ("stop", service), ("stop", slice_name)
    ]  # fmt: skip
    assert os.listdir(tmp_path) == []  # the output files, handed on, are removed


async def test_exit_codes_and_signals_come_from_the_main_process(tmp_path: Path) -> None:
    failed, _ = await run("exit 3", systemd_containment(FakeUnits(), tmp_path))
    assert (failed.exit_code, failed.signal, failed.error) == (3, None, None)
    killed, _ = await run("kill -9 $$", systemd_containment(FakeUnits(), tmp_path))
    assert (killed.exit_code, killed.signal) == (None, 9)


def test_the_command_reaches_the_shell_unexpanded() -> None:
    props = as_dict(
        service_properties(
            "d", "x.slice", "echo $$ $HOME", {"A": "1 2"}, "/w", "schedjob",
            (Path("/o/x.out"), Path("/o/x.err")),
        )
    )  # fmt: skip
    assert props["ExecStartEx"] == (
        "a(sasas)", [("/bin/sh", ["/bin/sh", "-c", "echo $$ $HOME"], ["no-env-expand"])]
    )  # fmt: skip
    assert props["Environment"] == ("as", ["A=1 2"]) and props["User"] == ("s", "schedjob")
    assert props["StandardOutputFileToAppend"] == ("s", "/o/x.out")
    assert props["WorkingDirectory"] == ("s", "/w")


async def test_all_of_a_long_output_arrives_in_order(tmp_path: Path) -> None:
    cmd = "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done"
    outcome, out = await run(cmd, systemd_containment(FakeUnits(), tmp_path))
    assert outcome.exit_code == 0
    assert out["stdout"] == b"".join(b"line %d\n" % i for i in range(3000))


async def test_a_limit_systemd_did_not_apply_runs_nothing(tmp_path: Path) -> None:
    units = FakeUnits()  # it writes no cgroup: the slice shows no memory limit
    outcome, _ = await run("true", systemd_containment(units, tmp_path), Limits(memory=1 << 30))
    assert outcome.error == (
        "cannot start: cannot place it in its cgroup: "
        "cannot enforce --memory (systemd did not apply it) here"
    )
    slice_name, service = unit_names(JOB, 1)
    assert ("start", service) not in units.calls and units.calls[-1] == ("stop", slice_name)


async def test_a_service_systemd_cannot_set_up_says_why(tmp_path: Path) -> None:
    units = FakeUnits(setup_status=217)
    outcome, _ = await run("true", systemd_containment(units, tmp_path))
    assert outcome.error == "cannot start: no such user" and outcome.exit_code is None
    _, service = unit_names(JOB, 1)
    assert ("stop", service) in units.calls  # whatever systemd made is stopped
    odd, _ = await run("true", systemd_containment(FakeUnits(setup_status=230), tmp_path))
    assert odd.error == "cannot start: systemd could not set it up (exit status 230)"


async def test_a_service_systemd_refuses_runs_nothing(tmp_path: Path) -> None:
    _, service = unit_names(JOB, 1)
    units = FakeUnits(refuse=service)
    outcome, _ = await run("true", systemd_containment(units, tmp_path))
    assert outcome.error == f"cannot start: systemd refused StartTransientUnit: {service}"
    assert units.calls[-1] == ("stop", unit_names(JOB, 1)[0])  # the slice goes too


async def test_a_forked_daemon_dies_with_the_service(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon"
    outcome, _ = await run(
        f"sleep 1000 & echo $! > {pidfile}", systemd_containment(FakeUnits(), tmp_path / "o")
    )
    assert outcome.exit_code == 0
    daemon = int(pidfile.read_text())
    # The SIGKILL is sent, not yet acted on, when the run returns: wait for it (a
    # daemon that outlived its unit, `sleep 1000`, fails this).
    deadline = asyncio.get_running_loop().time() + 5
    while _alive(daemon) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert not _alive(daemon)


async def test_a_cancel_and_a_timeout_stop_the_service(tmp_path: Path) -> None:
    units = FakeUnits()
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, cancel.set)
    canceled, _ = await run(
        "echo up; sleep 1000", systemd_containment(units, tmp_path), cancel=cancel
    )
    assert canceled.canceled and canceled.signal == signal.SIGTERM
    _, service = unit_names(JOB, 1)
    assert ("kill", f"{service} SIGTERM") in units.calls
    timed, _ = await run(
        "trap '' TERM; sleep 1000", systemd_containment(FakeUnits(), tmp_path), timeout=0.3
    )
    assert timed.timed_out and timed.signal == signal.SIGKILL  # TERM ignored: KILL after the grace


async def test_a_bus_lost_under_a_job_ends_it_with_the_reason(tmp_path: Path) -> None:
    units = FakeUnits(bus_lost=True)
    outcome, _ = await run("sleep 1000", systemd_containment(units, tmp_path))
    assert outcome.error == "lost track of it: the system bus is gone: EOF"
    _, service = unit_names(JOB, 1)
    assert not await units.is_loaded(service)  # and it is not left running


async def test_a_unit_in_containment_is_what_group_gives(tmp_path: Path) -> None:
    group = await systemd_containment(FakeUnits(), tmp_path).group(f"job-{JOB}-3", Limits())
    assert isinstance(group, JobUnit) and group.service == f"schedjob-{JOB}-3.service"
    assert group.outputs[0].path == tmp_path / f"{JOB}-3.out"


def test_the_unit_keeps_the_agents_bounding_set(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapBnd:\t00000000000000e4\nCapAmb:\t0\n")
    assert bounding_set(status) == 0xE4
    assert bounding_set(tmp_path / "missing") == 0


def test_unit_object_paths_are_escaped_as_systemd_does() -> None:
    assert unit_path("dbus.service") == "/org/freedesktop/systemd1/unit/dbus_2eservice"
    assert unit_path(f"schedjob-{JOB}-1.service") == (
        f"/org/freedesktop/systemd1/unit/schedjob_2d{JOB}_2d1_2eservice"
    )
    assert unit_path("1x-é.slice").endswith("/_31x_2d_c3_a9_2eslice")


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


def test_memory_is_refused_where_systemd_cannot_bound_swap(
    monkeypatch: Any, tmp_path: Path
) -> None:
    from schedagent.host import containment as module

    monkeypatch.setattr(module, "_no_swap", lambda: False)
    containment = systemd_containment(FakeUnits(), tmp_path)
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
    props = slice_properties("d", Limits(64 << 20, 10, 1.0))
    await manager.start_transient("a.slice", props)
    paths = (Path("/o/x.out"), Path("/o/x.err"))
    service = service_properties("d", "a.slice", "true", {"A": "1"}, "/", "u", paths)
    await manager.start_transient("b.service", service + jobunit.hardening(0xE4))
    assert [m.member for m in bus.sent] == ["StartTransientUnit"] * 2
    manager.kill_soon("b.service", signal.SIGTERM)
    assert bus.sent[-1].body == ["b.service", "all", signal.SIGTERM]
    assert bus.sent[-1].message_type is MessageType.METHOD_CALL
    failing = SystemdBus(FakeBus(job_result="failed"))  # type: ignore[arg-type]
    with pytest.raises(ContainmentError, match=r"could not start a\.slice: failed"):
        await failing.start_transient("a.slice", props)


async def test_a_unit_systemd_does_not_know_is_gone() -> None:
    gone = FakeBus(error="org.freedesktop.systemd1.NoSuchUnit")
    manager = SystemdBus(gone)  # type: ignore[arg-type]
    assert await manager.is_loaded("b.service") is False
    await manager.kill("b.service", signal.SIGKILL)  # no error: already gone
    await manager.reset_failed("b.service")
    denied = FakeBus(error="org.freedesktop.DBus.Error.AccessDenied")
    refused = SystemdBus(denied)  # type: ignore[arg-type]
    with pytest.raises(ContainmentError, match=r"refused StartTransientUnit: .*AccessDenied"):
        await refused.start_transient("a.slice", [])


def test_a_kill_on_a_bus_that_is_gone_does_not_raise() -> None:
    """The fence and the worker's error path call kill() from code that cannot handle
    an error: close() kills again, and waits, where one can."""

    class GoneBus(FakeBus):
        def send(self, msg: Message) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    SystemdBus(GoneBus()).kill_soon("b.service", signal.SIGKILL)  # type: ignore[arg-type]


class ExitingBus(FakeBus):
    """A service that runs until the test makes systemd signal a change of it."""

    def __init__(self) -> None:
        super().__init__()
        self.code = 0  # ExecMainCode: running

    async def call(self, msg: Message) -> Message:
        if msg.member != "GetAll":
            return await super().call(msg)
        self.send(msg)
        props = {
            "MainPID": Variant("u", 0 if self.code else 42),
            "ExecMainCode": Variant("i", self.code),
            "ExecMainStatus": Variant("i", 9 if self.code else 0),
            "Result": Variant("s", "signal" if self.code else "success"),
        }
        return Message.new_method_return(msg, "a{sv}", [props])

    def change(self, path: str) -> None:
        self.code = 2
        changed = Message.new_signal(
            path, "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
            ["org.freedesktop.systemd1.Service", {}, []],
        )  # fmt: skip
        for handler in self.handlers:
            handler(changed)


async def test_the_bus_follows_a_service_to_its_end() -> None:
    bus = ExitingBus()
    manager = SystemdBus(bus)  # type: ignore[arg-type]
    waiting = asyncio.create_task(manager.wait_exited("b.service"))
    while not any(m.member == "GetAll" for m in bus.sent):
        await asyncio.sleep(0.001)
    assert not waiting.done()  # running: it waits for a change
    bus.change(unit_path("other.service"))  # another unit's change is not its own
    await asyncio.sleep(0.01)
    assert not waiting.done()
    bus.code = 0
    bus.change(unit_path("b.service"))
    state = await asyncio.wait_for(waiting, 5)
    assert state == ServiceState(main_pid=0, exit_code=2, exit_status=9, result="signal")
    assert bus.sent[-1].path == unit_path("b.service")


async def test_a_detached_job_runs_on_and_a_new_runner_follows_it_to_its_end(
    tmp_path: Path,
) -> None:
    """A planned restart: the old runner leaves the job running and says how much of its
    output it handed on; the next one goes on from there, to the end, nothing twice."""
    units = FakeUnits()
    containment = systemd_containment(units, tmp_path / "o")
    go = tmp_path / "go"
    cmd = f"echo before; while [ ! -e {go} ]; do sleep 0.02; done; echo after; exit 4"
    first: dict[str, bytes] = {"stdout": b""}
    detach, units_seen = asyncio.Event(), []

    async def on_first(stream: str, data: bytes) -> None:
        first[stream] += data
        detach.set()  # as soon as the job has said something

    command = Command(cmd, job_environment({}, {}), None, None, 0.3, name=f"job-{JOB}-1")
    with pytest.raises(HandedOver):
        await run_command(
            command, on_first, asyncio.Event(), units_seen.append, containment, (detach, None)
        )
    (unit,) = units_seen
    assert isinstance(unit, JobUnit)
    resume = unit.resume_point()
    assert first["stdout"] == b"before\n" and resume == Resume(7, 0)
    _, service = unit_names(JOB, 1)
    assert await units.is_loaded(service)  # still running: nothing killed or stopped
    assert ("stop", service) not in units.calls and unit.outputs[0].path.exists()

    second: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def on_second(stream: str, data: bytes) -> None:
        second[stream] += data

    go.touch()
    outcome = await run_command(
        command, on_second, asyncio.Event(), containment=containment,
        handover=(asyncio.Event(), resume),
    )  # fmt: skip
    assert outcome.exit_code == 4 and second["stdout"] == b"after\n"
    assert not await units.is_loaded(service) and ("stop", service) in units.calls


async def test_attaching_to_a_unit_that_is_gone_says_so(tmp_path: Path) -> None:
    containment = systemd_containment(FakeUnits(), tmp_path)
    command = Command("true", {}, None, None, 0.3, name=f"job-{JOB}-1")
    outcome = await run_command(
        command, lambda *_: asyncio.sleep(0), asyncio.Event(), containment=containment,
        handover=(asyncio.Event(), Resume(0, 0)),
    )  # fmt: skip
    assert outcome.error == f"lost track of it: schedjob-{JOB}-1.service is gone"


class FailedUnitsBus(FakeBus):
    """systemd with two failed job units left by a dead agent."""

    async def call(self, msg: Message) -> Message:
        if msg.member != "ListUnitsByPatterns":
            return await super().call(msg)
        self.send(msg)
        units = [
            (name, "d", "loaded", "failed", "failed", "", unit_path(name), 0, "", "/")
            for name in (f"schedjob-{JOB}-1.service", f"schedagent-jobs-{JOB}_1.slice")
        ]
        return Message.new_method_return(msg, "a(ssssssouso)", [units])


async def test_failed_job_units_are_reset_by_pattern() -> None:
    bus = FailedUnitsBus()
    manager = SystemdBus(bus)  # type: ignore[arg-type]
    assert await manager.reset_failed_matching(["schedjob-*.service"]) == 2
    listed, *resets = bus.sent
    assert listed.body == [["failed"], ["schedjob-*.service"]]
    assert [(m.member, m.body) for m in resets] == [
        ("ResetFailedUnit", [f"schedjob-{JOB}-1.service"]),
        ("ResetFailedUnit", [f"schedagent-jobs-{JOB}_1.slice"]),
    ]
