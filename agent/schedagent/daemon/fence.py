"""The worker's own deadline: this node's jobs stop before its etcd lease can expire.

Past `Session.deadline` (no lease refresh for about a TTL) the leader may soon retry
this node's attempts elsewhere, so the fence kills them (SIGTERM, SIGKILL
FENCE_KILL_GRACE later) and no new one starts until a refresh works again. The one
exception is etcd being out for the whole cluster: while every peer says over NATS
that it cannot reach etcd either, nobody can retry anything and the jobs keep running
(`EtcdReach.stop_by`). docs/semantics.md, "Fenced execution".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from schedagent.core import fencing
from schedagent.daemon.running import RunningJob
from schedagent.daemon.worker import LEASE_LOST, Worker
from schedagent.etcd.session import Session

log = logging.getLogger(__name__)

CUT_OFF = "agent cut off from etcd"


class Fence:
    """Watches the session's deadline every CHECK seconds and stops the worker's jobs."""

    def __init__(
        self, session: Session, worker: Worker, stop_by: Callable[[], tuple[float, str]]
    ) -> None:
        self.session = session
        self.worker = worker
        self.stop_by = stop_by
        self.problem: str | None = None  # for the STATUS= line
        self._sigkill_at: dict[str, tuple[RunningJob, float]] = {}  # job id -> (job, when)

    def may_start(self) -> bool:
        """A job may start only while the lease is known to be alive."""
        return self.session.clock() < self.session.deadline

    async def run(self) -> None:
        renewed = self.session.renewed
        while True:
            await asyncio.sleep(fencing.CHECK)
            now = self.session.clock()
            if self.session.renewed is not renewed:
                # A new lease: the old one expired, and what ran under it is being
                # retried elsewhere (the worker interrupts too; this bounds the kill).
                # What started under the new lease since is this agent's to run.
                renewed = self.session.renewed
                self._stop(LEASE_LOST, now, spare=self.session.lease_id)
            self._check(now)
            self._escalate(now)

    def _check(self, now: float) -> None:
        if now < self.session.deadline:
            if self.problem is not None:
                log.info("etcd lease refreshed again: taking jobs again")
                self.problem = None
            return
        stop_by, why = self.stop_by()
        if now < stop_by:
            self._say(
                f"etcd is out for the whole cluster ({why}): {len(self.worker.running)} "
                "job(s) keep running",
                logging.WARNING,
            )
            return
        self._say(f"cut off from etcd ({why}): jobs stopped, none taken", logging.WARNING)
        self._stop(CUT_OFF, now)

    def _say(self, problem: str, level: int) -> None:
        # The verdict's wording changes with each answer; its kind is logged once.
        if self.problem is None or self.problem.split(" (")[0] != problem.split(" (")[0]:
            age = self.session.age()
            log.log(level, "%s; no lease refresh for %.1fs", problem, age or 0.0)
        self.problem = problem

    def _stop(self, reason: str, now: float, spare: int | None = None) -> None:
        """Interrupt every running attempt (but those started under the lease `spare`)
        and have any still alive SIGKILLed soon."""
        running = [j for j in self.worker.running.values() if spare is None or j.lease != spare]
        if not running:
            return
        self.worker.interrupt_all(reason, unless_lease=spare)
        for job in running:
            if job.group is not None and not job.ended and job.job_id not in self._sigkill_at:
                self._sigkill_at[job.job_id] = (job, now + fencing.FENCE_KILL_GRACE)

    def _escalate(self, now: float) -> None:
        for job_id, (job, when) in list(self._sigkill_at.items()):
            if job_id not in self.worker.running:
                del self._sigkill_at[job_id]
            elif now >= when and job.group is not None:
                del self._sigkill_at[job_id]
                # Its cgroup (or process group) whole: forks and escaped daemons too.
                job.group.kill()
                log.info("job %s: SIGKILL to what is left of it", job_id)
