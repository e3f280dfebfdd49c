"""What systemd hears while the agent runs: a STATUS= line and watchdog pings from the loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

from schedagent.host.notify import Notifier

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The facts the status line is made of."""

    leader: bool
    leader_name: str | None
    running: int
    draining: bool = False
    problems: Sequence[str | None] = ()


def status_line(s: Snapshot) -> str:
    """e.g. 'follower (leader node2), 1 job running; problem: disconnected from NATS'."""
    jobs = f"{s.running} job{'' if s.running == 1 else 's'} running"
    if s.draining:
        head = f"stopping: draining, {jobs}"
    elif s.leader:
        head = f"leader, {jobs}"
    else:
        head = f"follower (leader {s.leader_name or 'not known yet'}), {jobs}"
    problems = [p for p in s.problems if p]
    return "; ".join([head, *(f"problem: {p}" for p in problems)])


class Heartbeat:
    """Keeps systemd's view current from inside the event loop.

    Both loops are plain tasks on the agent's loop: a blocked loop sends nothing, so
    systemd's watchdog fires.
    """

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._last = ""

    def status(self, text: str) -> None:
        """Send STATUS= if it changed (waiting, running and stopping all go through here)."""
        if text != self._last:
            self._last = text
            self.notifier.status(text)

    def ready(self, text: str) -> None:
        self._last = text
        self.notifier.ready(text)

    def stopping(self, text: str) -> None:
        self._last = text
        self.notifier.stopping(text)

    async def keep_status(self, describe: Callable[[], str]) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.status(describe())

    async def watchdog(self) -> None:
        """WATCHDOG=1 every half timeout while the loop runs; returns if there is none.

        Pings say only that the loop is responsive: an etcd or NATS outage must not
        get the agent, and with it every job of the unit, killed (the fence stops jobs
        when that is needed: daemon/fence.py).
        """
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)
