"""What systemd hears while the agent runs: a STATUS= line and watchdog pings from the loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

from schedagent.core import fencing
from schedagent.host.notify import Notifier

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
# A loop silent this many ping intervals (of the two systemd allows) has its stacks
# written out before the watchdog kills it.
STACKS_AFTER = 1.6


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
        when that is needed: daemon/fence.py). A stuck loop sends nothing, and systemd
        kills the agent at the timeout (WatchdogSignal=SIGKILL); shortly before, a
        thread writes the loop's stack to stderr (the journal), which shows where.
        """
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        stall = StallReporter(interval * STACKS_AFTER)
        stall.start()
        try:
            while True:
                self.notifier.watchdog()
                stall.ping()
                await asyncio.sleep(interval)
        finally:
            stall.stop()


class StallReporter:
    """A thread that writes the event loop thread's stack once the loop has not
    pinged for `after` seconds (once per stall).

    Plain Python (sys._current_frames), not faulthandler.dump_traceback_later: that
    reads other threads' frames without the GIL and can crash the agent it reports on.
    """

    def __init__(self, after: float) -> None:
        self.after = after
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        self._told = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ping(self) -> None:
        self._last = time.monotonic()
        self._told = False

    def stop(self) -> None:
        self._done.set()
        self._thread.join(1.0)

    def _watch(self) -> None:
        while not self._done.wait(self.after / 4):
            stuck = time.monotonic() - self._last
            if stuck < self.after or self._told:
                continue
            self._told = True
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "?\n"
            text = f"schedagent: event loop stuck for {stuck:.1f}s; its stack:\n{stack}"
            # Straight to stderr: the logging lock may be what the loop is stuck in.
            with contextlib.suppress(OSError):
                os.write(2, text.encode(errors="replace"))


def watchdog_problem(watchdog: float | None, ttl: int) -> str | None:
    """Why this WatchdogSec= cannot work with node_ttl (one line), or None if it can.

    systemd kills a frozen agent's unit, jobs included, at most WatchdogSec after its
    last ping; that must come before the leader retries the jobs elsewhere.
    """
    if watchdog is None:
        return None
    limit = fencing.watchdog_limit(ttl)
    if watchdog <= limit:
        return None
    return (
        f"WatchdogSec={watchdog:g}s (systemd's watchdog for this unit) is too long for "
        f"node_ttl: {ttl}: a frozen agent's jobs would still run when they are retried "
        f"elsewhere; set WatchdogSec= to at most {limit:.2f}s, or node_ttl to at least "
        f"{fencing.ttl_for_watchdog(watchdog)} (docs/systemd.md)"
    )
