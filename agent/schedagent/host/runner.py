"""Runs one shell command in its own process group: output, timeout, cancel, no strays."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from schedagent.core.model import Outcome
from schedagent.host.child import STREAMS, Child

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
    user: str | None = None  # run as this user (the gate checked it is allowed)


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
    on_start: Callable[[int], None] = lambda _pid: None,
) -> Outcome:
    started = time.time()
    try:
        child = Child.spawn(["/bin/sh", "-c", command.cmd], cwd=command.cwd, **_identity(command))
    except OSError as exc:
        return Outcome(started, time.time(), error=f"cannot start: {exc.strerror or exc}")
    except KeyError as exc:  # the run-as user vanished since the gate checked it
        return Outcome(started, time.time(), error=f"cannot start: no user {exc}")
    on_start(child.pid)
    try:
        timed_out, canceled = await _supervise(child, command, on_output, cancel)
    finally:
        if child.returncode is None:  # cancelled, or failed: nothing of the job stays
            _signal_group(child.pid, signal.SIGKILL)
        child.close_pipes()
    code = child.returncode
    return Outcome(
        started_at=started,
        ended_at=time.time(),
        exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        timed_out=timed_out,
        canceled=canceled,
    )


async def _supervise(
    child: Child, command: Command, on_output: OnOutput, cancel: asyncio.Event
) -> tuple[bool, bool]:
    """Pump the output until the end, the timeout or a cancel: (timed_out, canceled)."""
    async with asyncio.TaskGroup() as tg:
        readers = [
            tg.create_task(_pump(child, stream, on_output, command.chunk_bytes))
            for stream in STREAMS
        ]
        timed_out, canceled = await _wait(child, command, cancel)
        # The shell is gone; anything it left behind in its group goes with it.
        _signal_group(child.pid, signal.SIGKILL)
        await _finish_readers(readers)
    return timed_out, canceled


def _identity(command: Command) -> dict[str, Any]:
    """The environment, and the user to switch to: done by exec, never a preexec_fn."""
    env = dict(command.env)
    if command.user is None or pwd.getpwuid(os.geteuid()).pw_name == command.user:
        return {"env": env}
    entry = pwd.getpwnam(command.user)
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    return {
        "env": env,
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid),
    }


async def _wait(child: Child, command: Command, cancel: asyncio.Event) -> tuple[bool, bool]:
    """Wait for exit, timeout or cancel; returns (timed_out, canceled)."""
    exited = child.exited
    canceled = asyncio.create_task(cancel.wait())
    waiting: set[asyncio.Future[Any]] = {exited, canceled}
    try:
        done, _ = await asyncio.wait(
            waiting, timeout=command.timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        canceled.cancel()
    if exited in done:
        return False, False
    await _kill_group(child, exited, command.kill_grace)
    return canceled not in done, canceled in done


async def _kill_group(child: Child, exited: asyncio.Future[int], grace: float) -> None:
    _signal_group(child.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), grace)
    except TimeoutError:
        _signal_group(child.pid, signal.SIGKILL)
        await asyncio.shield(exited)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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
