"""Waits for an attempt's end, its timeout or its cancel; the latter two stop it, TERM then KILL."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Protocol


class Signalled(Protocol):
    """The attempt's processes, as a whole (a cgroup, a unit, a process group)."""

    def signal(self, sig: signal.Signals) -> None: ...

    def kill(self) -> None: ...


async def wait_end(
    exited: asyncio.Future[Any],
    group: Signalled,
    time_limit: float | None,
    kill_grace: float,
    cancel: asyncio.Event,
) -> tuple[bool, bool]:
    """Wait for exited, time_limit seconds or a cancel; returns (timed_out, canceled).
    On a timeout or cancel the group gets SIGTERM, kill_grace, then SIGKILL, and this
    returns once exited is done."""
    canceled = asyncio.create_task(cancel.wait())
    waiting: set[asyncio.Future[Any]] = {exited, canceled}
    try:
        done, _ = await asyncio.wait(
            waiting, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        canceled.cancel()
    if exited in done:
        return False, False
    await _stop(group, exited, kill_grace)
    return canceled not in done, canceled in done


async def _stop(group: Signalled, exited: asyncio.Future[Any], grace: float) -> None:
    group.signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), grace)
    except TimeoutError:
        group.kill()
        await asyncio.shield(exited)
