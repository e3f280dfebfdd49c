"""Writing an attempt's end: finished, lost or handed back, retried while etcd is away."""

from __future__ import annotations

import asyncio
import logging
import time

from schedagent.core import transitions
from schedagent.core.model import Job, JobState, Outcome
from schedagent.core.reasons import HANDED_BACK, INTERRUPTED
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.running import OutputTail, RunningJob
from schedagent.errors import ConflictError, NotFoundError, StoreUnavailableError
from schedagent.etcd.jobstore import Mutation
from schedagent.etcd.updates import BatchedUpdates
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

WRITE_RETRY_DELAY = 1.0
AGENT_STOPPED = "agent stopped"
NODE_DRAINED = "node drained by an operator"
# Interruptions that hand the attempt back (no retry used): nothing went wrong with the job.
HAND_BACKS = (AGENT_STOPPED, NODE_DRAINED)


class AttemptEnds:
    def __init__(
        self,
        node: str,
        updates: BatchedUpdates,
        backoff: transitions.Backoff,
        metrics: AgentMetrics,
        bus: Bus,
    ) -> None:
        self.node = node
        self.updates = updates
        self.backoff = backoff
        self.metrics = metrics
        self.bus = bus

    async def record(
        self, job: Job, running: RunningJob, outcome: Outcome, tail: OutputTail
    ) -> bool:
        """Write how the attempt ended and announce it; whether it was recorded (not if
        the job had moved on meanwhile)."""

        def mutate(j: Job) -> Job | None:
            now, attempt = time.time(), running.attempt
            if running.interrupted in HAND_BACKS:
                return transitions.hand_back(j, self.node, attempt, running.interrupted, now)
            if running.interrupted is not None:
                if j.attempt != attempt:
                    return None
                return transitions.lose(j, self.node, running.interrupted, self.backoff, now)
            return transitions.finish(j, self.node, attempt, outcome, tail.kept(), self.backoff)

        stored, changed = await self._write_end(job.id, running, mutate)
        if stored is None or not changed:
            log.warning(
                "job %s attempt %d: result not recorded, the job moved on (%s, attempt %d)",
                job.id,
                running.attempt,
                stored.state if stored else "?",
                stored.attempt if stored else 0,
                extra={"job_id": job.id, "attempt": running.attempt},
            )
            return False
        self.count(job, running, outcome)
        log.info(
            "job %s attempt %d ended: %s (%s)",
            job.id,
            running.attempt,
            stored.state,
            stored.reason,
            extra={"job_id": job.id, "attempt": running.attempt, "exit_code": stored.exit_code},
        )
        await self.bus.publish_event(stored)
        return True

    def count(self, job: Job, running: RunningJob, outcome: Outcome) -> None:
        """The attempt's end in the metrics: how it ended, not the job (which may retry)."""
        if running.interrupted is not None:
            state = HANDED_BACK if running.interrupted in HAND_BACKS else INTERRUPTED
            reason: str | None = running.interrupted
        elif outcome.error is not None and running.pid is None:
            state, reason = str(JobState.FAILED), "cannot start"
        else:
            end, reason = transitions.outcome_state(outcome, job.spec.timeout)
            state = str(end)
        self.metrics.attempt_ended(state, reason, outcome.ended_at - outcome.started_at)

    async def _write_end(
        self, job_id: str, running: RunningJob, mutate: Mutation
    ) -> tuple[Job | None, bool]:
        """The end, compared at the revision this worker wrote; else on what etcd holds."""
        seen = None
        if running.record is not None and running.revision:
            seen = (running.record, running.revision)
        return await self.write_until_done(job_id, mutate, seen)

    async def write_until_done(
        self, job_id: str, mutate: Mutation, seen: tuple[Job, int] | None = None
    ) -> tuple[Job | None, bool]:
        """mutate's write, batched with other jobs' (etcd/updates.py), compared with the
        record as seen (read first if None)."""
        # A finished attempt must be recorded: keep trying while etcd is away.
        while True:
            try:
                return await self.updates.update(job_id, mutate, seen)
            except NotFoundError:
                return None, False
            except (StoreUnavailableError, ConflictError) as exc:
                log.warning(
                    "cannot record the end of job %s yet: %s", job_id, exc, extra={"job_id": job_id}
                )
                seen = None
                await asyncio.sleep(WRITE_RETRY_DELAY)
