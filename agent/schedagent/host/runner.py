"""Runs one shell command in its own units, cgroup or process group: output, timeout, no strays."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pwd
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from schedagent.core.model import Outcome
from schedagent.errors import ContainmentError
from schedagent.host.child import STREAMS, Child
from schedagent.host.containment import ChildGroup, Containment, JobGroup, Limits, ProcessGroup
from schedagent.host.jobunit import JobUnit, Resume
from schedagent.host.jobwait import End, wait_end
from schedagent.host.unitrunner import run_in_unit

log = logging.getLogger(__name__)

SAFE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PIPE_DRAIN_TIMEOUT = 2.0

OnOutput = Callable[[str, bytes], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Command:
    cmd: str
    env: Mapping[str, str]
    cwd: str | None
    timeout: float | None
    kill_grace: float
    chunk_bytes: int = 16384
    tail_bytes: int = 4096  # how much of the output its record keeps
    user: str | None = None  # run as this user (the gate checked it is allowed)
    name: str = "job"  # its cgroup's name: unique on this node
    limits: Limits = dataclasses.field(default_factory=Limits)


def job_environment(spec_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """A safe base (never the agent's NOTIFY_SOCKET, credentials, ...) plus the spec's env."""
    env = {k: os.environ[k] for k in SAFE_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(spec_env)
    env.update(extra)
    return env


async def run_command(
    command: Command,
    on_output: OnOutput,
    cancel: asyncio.Event,
    on_start: Callable[[JobGroup], None] = lambda _group: None,
    containment: Containment | None = None,
    handover: tuple[asyncio.Event, Resume | None] | None = None,
) -> Outcome:
    """Run the command to its end, timeout or cancel; whatever it started dies with it.

    handover (in a systemd unit only): (detach, resume). Once detach is set the job is
    left running for the next agent (HandedOver is raised); resume, if given, is where
    an earlier agent left this attempt's output: it is followed, not started again."""
    started = time.time()
    try:
        group = await _group(containment, command)
    except ContainmentError as exc:  # a limit this host cannot enforce: nothing ran
        return Outcome(started, time.time(), error=str(exc))
    detach, resume = handover or (asyncio.Event(), None)
    if isinstance(group, JobUnit) and resume is not None:
        return await run_in_unit(group, command, resume, on_output, cancel, on_start, detach)
    if isinstance(group, JobUnit):
        return await _run_in_unit(command, group, on_output, cancel, on_start, detach)
    if resume is not None:  # pragma: no cover - a handover is only taken with units
        return Outcome(started, time.time(), error="lost track of it: no systemd units here")
    child = await _start(command, group)
    if isinstance(child, str):
        return Outcome(started, time.time(), error=child)
    on_start(group)
    try:
        timed_out, canceled = await _supervise(child, group, command, on_output, cancel)
    finally:
        if child.returncode is None:  # cancelled, or failed: nothing of the job stays
            group.kill()
        child.close_pipes()
        ending = await group.close()
    code = child.returncode
    oom = None if timed_out or canceled or code == 0 else ending.oom_reason(command.limits)
    return Outcome(
        started_at=started,
        ended_at=time.time(),
        exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        timed_out=timed_out,
        canceled=canceled,
        error=oom,
        usage=ending.usage or None,
    )


async def _run_in_unit(
    command: Command,
    unit: JobUnit,
    on_output: OnOutput,
    cancel: asyncio.Event,
    on_start: Callable[[JobGroup], None],
    detach: asyncio.Event,
) -> Outcome:
    try:
        identity = _identity(command)
    except KeyError as exc:  # the run-as user vanished since the gate
        return Outcome(time.time(), time.time(), error=f"cannot start: no user {exc}")
    user = command.user if "user" in identity else None  # None: as the agent itself
    cwd = identity["cwd"] or os.getcwd()
    return await run_in_unit(
        unit, command, (identity["env"], cwd, user), on_output, cancel, on_start, detach
    )


async def _group(containment: Containment | None, command: Command) -> ChildGroup | JobUnit:
    if containment is None:
        return ProcessGroup()
    return await containment.group(command.name, command.limits)


async def _start(command: Command, group: ChildGroup) -> Child | str:
    """The child, placed in its group before its command runs; or why it did not start."""
    try:
        child = Child.spawn(["/bin/sh", "-c", command.cmd], gated=group.gated, **_identity(command))
    except (OSError, KeyError) as exc:  # KeyError: the run-as user vanished since the gate
        await group.close()
        what = f"no user {exc}" if isinstance(exc, KeyError) else exc.strerror or exc
        return f"cannot start: {what}"
    try:
        await group.join(child.pid)
    except (OSError, ContainmentError) as exc:
        os.kill(child.pid, signal.SIGKILL)  # still at its gate: nothing of the job ran
        await asyncio.shield(child.exited)
        child.close_pipes()
        await group.close()
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return f"cannot start: cannot place it in its cgroup: {why}"
    child.open_gate()
    return child


async def _supervise(
    child: Child, group: ChildGroup, command: Command, on_output: OnOutput, cancel: asyncio.Event
) -> tuple[bool, bool]:
    """Pump the output until the end, the timeout or a cancel: (timed_out, canceled)."""
    async with asyncio.TaskGroup() as tg:
        readers = [
            tg.create_task(_pump(child, stream, on_output, command.chunk_bytes))
            for stream in STREAMS
        ]
        how = await wait_end(child.exited, group, command.timeout, command.kill_grace, cancel)
        timed_out, canceled = how is End.TIMED_OUT, how is End.CANCELED
        # The shell is gone; anything it left behind in its group goes with it.
        group.kill()
        await _finish_readers(readers)
    return timed_out, canceled


def _identity(command: Command) -> dict[str, Any]:
    """The environment, and the user to switch to: done by exec, never a preexec_fn."""
    env = dict(command.env)
    if command.user is None or pwd.getpwuid(os.geteuid()).pw_name == command.user:
        return {"env": env, "cwd": command.cwd}
    entry = pwd.getpwnam(command.user)
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    return {
        "env": env,
        # Without --cwd, its home: the agent's own directory is not the job user's.
        "cwd": command.cwd or (entry.pw_dir if os.path.isdir(entry.pw_dir) else "/"),
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid),
    }


async def _pump(child: Child, stream: str, on_output: OnOutput, chunk: int) -> None:
    while data := await child.read(stream, chunk):
        await on_output(stream, data)


async def _finish_readers(readers: list[asyncio.Task[None]]) -> None:
    if all(reader.done() for reader in readers):
        return  # the usual case: the output ended with the process
    # A process that left the group (setsid) may still hold the pipes: stop waiting.
    _, pending = await asyncio.wait(readers, timeout=PIPE_DRAIN_TIMEOUT)
    for task in pending:
        log.warning("job output pipe still held open by an escaped process; closing it")
        task.cancel()
