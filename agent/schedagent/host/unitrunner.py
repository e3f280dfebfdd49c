"""Runs one shell command as a transient systemd service: output from files, end from systemd."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from schedagent.core.model import Outcome
from schedagent.errors import ContainmentError, HandedOver
from schedagent.host.jobcgroup import Ending
from schedagent.host.jobunit import JobUnit, Resume
from schedagent.host.jobwait import End, wait_end
from schedagent.host.outputfile import follow
from schedagent.host.systemd_bus import ServiceState

if TYPE_CHECKING:  # runner.py imports this module: the type only
    from schedagent.host.runner import Command

log = logging.getLogger(__name__)

OnOutput = Callable[[str, bytes], Awaitable[None]]
# A command's environment, working directory and user (None: the agent's own).
Identity = tuple[Mapping[str, str], str, str | None]
# The exit codes of ExecMainCode (the kernel's si_code of the main process's end).
CLD_EXITED = 1


async def run_in_unit(
    unit: JobUnit,
    command: Command,
    begin: Identity | Resume,
    on_output: OnOutput,
    cancel: asyncio.Event,
    on_start: Callable[[JobUnit], None],
    detach: asyncio.Event,
) -> Outcome:
    """Run the command in unit to its end, timeout or cancel; whatever it started dies
    with it. begin: its env, cwd and user (a start), or where an earlier agent left
    its output (followed, not started again; command.timeout is what is left of it).
    HandedOver if detach comes first."""
    started = time.time()
    try:
        if isinstance(begin, Resume):
            await unit.attach(begin)
        else:
            await unit.start(command.cmd, *begin)
    except ContainmentError as exc:
        await unit.close()
        what = "lost track of it" if isinstance(begin, Resume) else "cannot start"
        return Outcome(started, time.time(), error=f"{what}: {exc}")
    on_start(unit)
    return await supervise(unit, command, on_output, cancel, detach, started)


async def supervise(
    unit: JobUnit,
    command: Command,
    on_output: OnOutput,
    cancel: asyncio.Event,
    detach: asyncio.Event,
    started: float,
) -> Outcome:
    """Hand on the unit's output until its end, timeout or cancel, then stop it and
    account for it; or, if detach comes first, leave it running (HandedOver)."""
    ended = asyncio.Event()
    how = End.EXITED
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                follow(unit.outputs, on_output, command.chunk_bytes, ended, command.tail_bytes)
            )
            exited = tg.create_task(_exited(unit))
            try:
                how = await wait_end(
                    exited, unit, command.timeout, command.kill_grace, cancel, detach
                )
            finally:
                if how is End.DETACHED:
                    exited.cancel()
                else:
                    unit.kill()  # what it left behind goes with it, before the last read
                ended.set()
    finally:
        # Detached: its units and files stay for the next agent.
        ending = Ending({}) if how is End.DETACHED else await unit.close()
    if how is End.DETACHED:
        raise HandedOver(f"{unit.service} left running, its output at {unit.resume_point()}")
    timed_out, canceled = how is End.TIMED_OUT, how is End.CANCELED
    result = exited.result()
    lost = result if isinstance(result, str) else None
    end = None if isinstance(result, str) else result
    succeeded = end is not None and (end.exit_code, end.exit_status) == (CLD_EXITED, 0)
    stopped = timed_out or canceled
    oom = None if succeeded or stopped else ending.oom_reason(unit.limits)
    exit_code, signal = _exit(end)
    return Outcome(
        started_at=started,
        ended_at=time.time(),
        exit_code=exit_code,
        signal=signal,
        timed_out=timed_out,
        canceled=canceled,
        error=lost or oom,
        usage=ending.usage or None,
    )


async def _exited(unit: JobUnit) -> ServiceState | str:
    """The service's state at its end, or why it could not be followed to it."""
    try:
        return await unit.wait_exited()
    except ContainmentError as exc:  # the bus went away under it
        log.warning("%s: lost track of it: %s", unit.service, exc)
        return f"lost track of it: {exc}"


def _exit(end: ServiceState | None) -> tuple[int | None, int | None]:
    """(exit code, signal) from systemd's ExecMainCode/ExecMainStatus: never from its
    Result, which counts an end by SIGTERM as a success."""
    if end is None or not end.exited:
        return None, None
    if end.exit_code == CLD_EXITED:
        return end.exit_status, None
    return None, end.exit_status  # killed or dumped: by that signal
