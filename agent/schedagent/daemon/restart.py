"""A planned restart: running attempts and the lease left to the next agent, which takes them."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from schedagent.core import fencing
from schedagent.core.names import Keys
from schedagent.daemon import handover
from schedagent.daemon.handover import Handover
from schedagent.daemon.worker import Worker
from schedagent.errors import ContainmentError, StoreUnavailableError
from schedagent.etcd.session import Session, fence_clock
from schedagent.etcd.store import Delete, Store
from schedagent.host import guard
from schedagent.host.containment import Containment
from schedagent.host.systemd_bus import is_restart

log = logging.getLogger(__name__)

# Resume only if the guard is due this much later at least: the guard timer is stopped
# only once systemd is reached, a moment after the lease is resumed.
RESUME_MARGIN = 2.0


class Succession:
    """This agent's side of a handover: the one its predecessor left (read before the
    session starts: its lease is resumed instead of a new one granted), and the one it
    leaves when systemd restarts it."""

    def __init__(
        self, path: Path = handover.DEFAULT_PATH, clock: Callable[[], float] = fence_clock
    ) -> None:
        self.path = path
        self.clock = clock  # the handover's refresh time is on the fence's clock
        self.received: Handover | None = None
        self.resumed = False
        self.handed_over = False  # set once this agent left its jobs and lease behind

    def read(self) -> None:
        """Take the predecessor's handover, if this agent runs as a systemd service
        and there is one: it is used once (a later start without a handover of its
        own stops whatever job units are left)."""
        if "INVOCATION_ID" not in os.environ:
            return  # not started by systemd: no predecessor handed it anything
        self.received = handover.read(self.path)
        handover.remove(self.path)

    async def start_session(self, session: Session) -> None:
        """Resume the predecessor's lease if it is still alive and its guard not about
        to stop the jobs, else grant a new one."""
        received = self.received
        if received is not None and not self.resumed:
            left = guard.guard_delay(received.refreshed_at, session.clock(), received.ttl)
            if left < RESUME_MARGIN:
                log.warning("the handover came too late (its guard is due in %.1fs)", left)
            else:
                self.resumed = await session.resume(received.lease_id)
            if self.resumed:
                return
        await session.start()

    async def take_over(self, worker: Worker, containment: Containment) -> None:
        """After containment is set up, before the node registers and the reconciler
        runs: follow the attempts handed over under the resumed lease; without a
        handover (or its lease gone), stop every job unit left on this host."""
        units = containment.units
        if units is None:
            await self._wait_for_the_guard()
            return
        try:
            await guard.disarm_guard(units)
        except ContainmentError as exc:
            log.warning("cannot stop the guard timer: %s", exc)
        attempts = self.received.attempts if self.received is not None else ()
        if self.resumed:
            taken = await worker.reattach(attempts)
            log.info(
                "took over %d of %d running attempt(s) from the last agent", taken, len(attempts)
            )
            return
        if attempts:
            log.warning(
                "the last agent handed over %d attempt(s) under a lease that is gone: "
                "stopping them (the leader retries them)",
                len(attempts),
            )
        await containment.stop_all_jobs()

    async def _wait_for_the_guard(self) -> None:
        """Attempts were handed over, but this agent cannot take them (no systemd units
        here: the bus is away, or containment.systemd was turned off): they run on
        until the guard stops them. Nothing may be retried before that, so this agent
        registers (and its reconciler hands them back) only once they are gone."""
        received = self.received
        if received is None or not received.attempts:
            return
        due = guard.guard_delay(received.refreshed_at, self.clock(), received.ttl)
        wait = due + fencing.FENCE_KILL_GRACE + fencing.KILL_LATENCY
        log.warning(
            "cannot take the %d attempt(s) handed over (no systemd units here): "
            "waiting %.1fs for the guard to stop them",
            len(received.attempts),
            wait,
        )
        await asyncio.sleep(wait)

    async def restarting(self, containment: Containment) -> bool:
        """Whether systemd is restarting this agent's unit (not stopping it), in units
        of its own that can outlive it: then it hands over instead of draining."""
        units = containment.units
        if units is None or "INVOCATION_ID" not in os.environ or containment.agent_unit is None:
            return False
        try:
            return is_restart(await units.pending_job_type(containment.agent_unit))
        except ContainmentError as exc:
            log.warning("cannot ask systemd whether this is a restart (%s): draining", exc)
            return False

    async def hand_over(
        self, worker: Worker, session: Session, store: Store, keys: Keys, containment: Containment
    ) -> None:
        """Resign leadership (the election must have ended: it would stand again),
        leave every running attempt to the next agent with the lease, arm the guard."""
        units = containment.units
        assert units is not None  # restarting() said so
        invocation = os.environ["INVOCATION_ID"]
        await _resign(store, keys, session)
        handed = await worker.hand_over()
        await session.refresh_now()  # the guard's time counts from the last refresh
        left = Handover(
            invocation_id=invocation,
            lease_id=session.lease_id,
            ttl=session.ttl,
            refreshed_at=session.refreshed_at or 0.0,
            attempts=tuple(handed),
        )
        try:
            self.path.parent.mkdir(mode=0o750, exist_ok=True)
            handover.write(self.path, left)
            delay = guard.guard_delay(left.refreshed_at, session.clock(), session.ttl)
            await guard.arm_guard(units, delay)
        except (OSError, ContainmentError) as exc:
            # Without a handover and a guard the jobs must not outlive this agent's
            # lease: ExecStopPost= (no handover of this invocation) stops them.
            log.error("cannot hand %d attempt(s) over, they are stopped: %s", len(handed), exc)
            handover.remove(self.path)
            return
        self.handed_over = True
        log.info("restarting: %d running attempt(s) handed to the next agent", len(handed))


async def _resign(store: Store, keys: Keys, session: Session) -> None:
    """Delete this agent's candidacy: the next one campaigns afresh under the same
    lease (a key left would make its campaign find one and keep this one's token)."""
    try:
        await store.txn([], [Delete(keys.candidate(session.lease_id))])
    except StoreUnavailableError as exc:
        log.warning("cannot resign leadership before the restart: %s", exc)
