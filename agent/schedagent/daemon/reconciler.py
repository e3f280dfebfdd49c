"""The reconciler: what etcd says runs on this node against what runs here, repaired."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors

from schedagent.core import transitions, wire
from schedagent.core.model import Job, JobState
from schedagent.daemon.strays import Records, StrayKiller
from schedagent.daemon.worker import Worker
from schedagent.errors import StoreUnavailableError, WireError
from schedagent.etcd.session import Session
from schedagent.tasks import cancel_and_wait

log = logging.getLogger(__name__)

INTERVAL = 5.0  # between passes when nothing happens
RETRY_DELAY = 1.0  # after a pass etcd did not answer: the first one after it is back
NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError)


class Reconciler:
    """Runs beside the worker, also while it drains, and repairs every difference:

    - an attempt it runs that the record no longer gives it, or whose cancel was asked
      for, is killed (control messages bring cancels at once; a pass catches lost ones);
    - a RUNNING record of this node that it does not run is closed (handed back if it
      never started here), with a write compared at the revision read;
    - a process on this host of an attempt this node no longer runs is killed
      (daemon/strays.py: the process table is read only when one may exist).

    A pass runs every INTERVAL, and at once after NATS reconnects (streams made again
    first) or the etcd lease is replaced; after a pass etcd refused, within RETRY_DELAY.
    """

    def __init__(self, worker: Worker, session: Session) -> None:
        self.worker = worker
        self.session = session
        self.node = worker.node
        self.jobs = worker.jobs
        self.bus = worker.bus
        self.strays = StrayKiller(worker)
        self._streams_due = False

    async def run(self) -> None:
        control = await self._listen()
        try:
            while True:
                delay = INTERVAL if await self._pass() else RETRY_DELAY
                await self._wait(delay)
        finally:
            try:
                await control.unsubscribe()
            except nats.errors.Error as exc:
                log.info("control unsubscribe at stop failed: %s", exc)

    async def _listen(self) -> Any:
        subject = self.bus.subjects.control(self.node)
        while True:
            try:
                return await self.bus.nc.subscribe(subject, cb=self._on_control)
            except NATS_ERRORS as exc:
                log.warning("cannot subscribe to %s yet: %s", subject, exc)
                await asyncio.sleep(RETRY_DELAY)

    async def _on_control(self, msg: Any) -> None:
        try:
            control = wire.parse_control(msg.data)
        except WireError as exc:
            log.warning("dropping malformed control message (%s): %r", exc, msg.data[:200])
            return
        if control.action == "cancel":
            self.worker.stop_attempt(control.job, control.attempt, "cancel requested")

    async def _wait(self, delay: float) -> None:
        """Until delay has passed, NATS reconnected or the etcd lease was replaced."""
        waiters = [
            asyncio.create_task(self.bus.reconnected.wait()),
            asyncio.create_task(self.session.renewed.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(*waiters)
        if self.bus.reconnected.is_set():
            self.bus.reconnected.clear()
            self._streams_due = True  # NATS may have come back without its storage

    async def _pass(self) -> bool:
        """One reconciliation; False if it must be tried again soon."""
        try:
            if self._streams_due:
                await self.bus.ensure_streams()
                self._streams_due = False
            await self.reconcile()
            return True
        except StoreUnavailableError as exc:
            log.info("reconciliation postponed: %s", exc)
        except NATS_ERRORS as exc:
            log.info("reconciliation postponed: NATS: %s", exc or type(exc).__name__)
        except Exception:
            log.exception("reconciliation failed; trying again")
        return False

    async def reconcile(self) -> None:
        # Attempts started before this read: their RUNNING write is in what it returns.
        mark = self.worker.starts
        records = {job.id: (job, rev) for job, rev in await self.jobs.on_node(self.node)}
        self._stop_attempts_not_ours(records, mark)
        await self.strays.run(records)
        for job, revision in records.values():
            if job.state == JobState.RUNNING and not self._runs(job.id):
                await self._close_orphan(job, revision)

    def _runs(self, job_id: str) -> bool:
        return job_id in self.worker.running or job_id in self.worker.starting

    def _stop_attempts_not_ours(self, records: Records, mark: int) -> None:
        for running in list(self.worker.running.values()):
            if running.seq > mark:
                continue
            job = records.get(running.job_id, (None, 0))[0]
            ours = job is not None and transitions.owns(
                job, self.node, running.attempt, JobState.RUNNING
            )
            if not ours:
                why = "its record no longer gives this attempt to this node"
                self.worker.stop_attempt(running.job_id, running.attempt, why)
            elif job is not None and job.cancel_requested:
                self.worker.stop_attempt(running.job_id, running.attempt, "cancel requested")

    async def _close_orphan(self, job: Job, revision: int) -> None:
        worker = self.worker
        ran_here = (job.id, job.attempt) in worker.unrecorded
        now = time.time()
        new = transitions.orphaned(
            job.clone(),
            self.node,
            worker.lease(),
            ran_here,
            worker.backoff,
            now,
            self.session.leases,
        )
        if new is None or not await self.jobs.write(new, revision):
            return  # it changed since the read: the next pass looks again
        worker.unrecorded.discard((job.id, job.attempt))
        closed = new.attempts[-1] if new.attempts else None
        log.warning(
            "job %s attempt %d: recorded RUNNING here, but nothing runs it: closed (%s)",
            job.id,
            job.attempt,
            closed.reason if closed is not None else "?",
            extra={"job_id": job.id, "attempt": job.attempt},
        )
        await self.bus.publish_event(new)
