"""Waits for an attempt's end, its timeout or its cancel; the latter two stop it, TERM then KILL."""

from __future__ import annotations

import asyncio
import enum
import signal
from typing import Any, Protocol


class Signalled(Protocol):
    """The attempt's processes, as a whole (a cgroup, a unit, a process group)."""

    def signal(self, sig: signal.Signals) -> None: ...

    def kill(self) -> None: ...


class End(enum.Enum):
    """How waiting for an attempt ended."""

    EXITED = "exited"
    TIMED_OUT = "timed out"
    CANCELED = "canceled"
    DETACHED = "detached"  # left running for the next agent: not stopped


async def wait_end(
    exited: asyncio.Future[Any],
    group: Signalled,
    time_limit: float | None,
    kill_grace: float,
    cancel: asyncio.Event,
    detach: asyncio.Event | None = None,
) -> End:
    """Wait for exited, time_limit seconds, a cancel or a detach. On a timeout or
    cancel the group gets SIGTERM, kill_grace, then SIGKILL, and this returns once
    exited is done; on a detach it returns at once, the group left as it is."""
    canceled = asyncio.create_task(cancel.wait())
    detached = asyncio.create_task(detach.wait()) if detach is not None else None
    waiting: set[asyncio.Future[Any]] = {exited, canceled} | ({detached} if detached else set())
    try:
        done, _ = await asyncio.wait(
            waiting, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        canceled.cancel()
        if detached is not None:
            detached.cancel()
    if exited in done:
        return End.EXITED
    if detached in done and canceled not in done:
        return End.DETACHED
    await _stop(group, exited, kill_grace)
    return End.CANCELED if canceled in done else End.TIMED_OUT


async def _stop(group: Signalled, exited: asyncio.Future[Any], grace: float) -> None:
    group.signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), grace)
    except TimeoutError:
        group.kill()
        await asyncio.shield(exited)
