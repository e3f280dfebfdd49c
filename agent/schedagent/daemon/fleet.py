"""The leader's fleet loop: rolls each fleet run out from what etcd holds, across failovers.

Runs only while this agent leads, beside the scheduler. On every pass it reads each
unfinished group's parts (jobs with ids derived from (group, host)) and the hosts
online, asks core/rollout.py what to do, and writes it fenced: new parts are created
compared absent (so a new leader, or a retried write, never makes a second job for a
host), and the budget is counted from the jobs' states, never from memory. The loop
looks again on every group change, and every POLL seconds while a group is unfinished
(a part ending changes a job, not the group).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

from schedagent.core import rollout, transitions, wire
from schedagent.core.fleet import Group, part_job_id
from schedagent.core.model import Job, JobState
from schedagent.core.names import Keys
from schedagent.core.rollout import Part, Plan, Situation
from schedagent.errors import FencedError, NotFoundError, StoreUnavailableError
from schedagent.etcd.groupstore import PARTS_PER_TXN, GroupStore, decode_group
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.mirror import Mirror
from schedagent.etcd.store import KV, Compare
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

POLL = 0.5
IDLE_WAKEUP = 5.0
RETRY_DELAY = 1.0


class FleetLoop:
    def __init__(self, keys: Keys, jobs: JobStore, bus: Bus, fence: Sequence[Compare]) -> None:
        self.jobs = jobs
        self.bus = bus
        self.fence = list(fence)
        self.groups = GroupStore(jobs.store, keys)
        self.view: Mirror[Group] = Mirror(jobs.store, keys.groups, _decode)

    async def run(self) -> None:
        await self.view.drive(self.run_pass)

    async def run_pass(self) -> float:
        """Advance every unfinished group; seconds until the next pass."""
        active = [e for e in self.view.items.values() if not e.value.done]
        if not active:
            return IDLE_WAKEUP
        try:
            online = await self.groups.online()
        except StoreUnavailableError as exc:
            log.warning("fleet runs: cannot read the hosts now: %s", exc)
            return RETRY_DELAY
        soonest = time.time() + POLL
        for entry in active:
            try:
                wake_at = await self.advance(entry.value, entry.mod_revision, online)
            except StoreUnavailableError as exc:
                log.warning("fleet run %s: cannot advance now: %s", entry.value.id, exc)
                wake_at = time.time() + RETRY_DELAY
            soonest = min(soonest, wake_at)
        return max(soonest - time.time(), 0.01)

    async def advance(self, group: Group, revision: int, online: set[str]) -> float:
        """Take the group's next step; when to look again."""
        jobs = await self.groups.parts(group)
        now = time.time()
        parts = {host: Part(rollout.result_of(job), _ended_at(job)) for host, job in jobs.items()}
        policy = group.definition.policy
        situation = Situation(
            policy, group.targets, parts, online, now, group.accepted_at, group.canceled
        )
        step = rollout.plan(situation)
        if step.done:
            await self._finish(group, revision, rollout.counts(situation))
            return now + POLL
        await self._apply(group, revision, step, jobs)
        return now + POLL if step.wake_at is None else min(step.wake_at, now + POLL)

    async def _apply(self, group: Group, revision: int, step: Plan, jobs: dict[str, Job]) -> None:
        now = time.time()
        made = [_part(group, host, now) for host in step.start]
        for host, reason in {**step.unreachable, **step.skip}.items():
            if host in jobs:
                await self._abandon(jobs[host], reason)
            else:
                made.append(_ended_part(group, host, reason, now))
        for host in step.cancel:
            await self._cancel(jobs[host], group.id)
        for first in range(0, len(made), PARTS_PER_TXN):
            chunk = made[first : first + PARTS_PER_TXN]
            if not await self.groups.add_parts((group.id, revision), chunk, self.fence):
                if not await self.jobs.fence_holds(self.fence):
                    raise FencedError("the election key changed: another agent leads now")
                return  # the group changed (a cancel) or a part exists: decide again
            for job in chunk:
                _log_part(group, job)
                await self.bus.publish_event(job)

    async def _finish(self, group: Group, revision: int, counts: dict[str, int]) -> None:
        done = dataclasses.replace(group, done=True, counts=counts)
        if await self.groups.replace(done, revision, self.fence):
            log.info("fleet run %s ended: %s", group.id, rollout.summary(counts))

    async def _abandon(self, job: Job, reason: str) -> None:
        """A queued part ends as unreachable or skipped (its host gone, or a stop)."""
        try:
            ended, changed = await self.jobs.update(
                job.id, lambda j: transitions.abandon(j, reason), self.fence
            )
        except NotFoundError:
            return
        if changed:
            log.info("job %s: %s", job.id, reason, extra={"job_id": job.id})
            await self.bus.publish_event(ended)

    async def _cancel(self, job: Job, group_id: str) -> None:
        """Cancel a live part of a canceled group, fenced, as `schedctl cancel` does."""
        try:
            job, changed = await self.jobs.update(
                job.id, lambda j: transitions.cancel(j, time.time()), self.fence
            )
        except NotFoundError:
            return
        if not changed:
            return
        log.info("fleet run %s: canceled part %s", group_id, job.id, extra={"job_id": job.id})
        await self.bus.publish_event(job)
        if job.state == JobState.RUNNING and job.node is not None:
            body = wire.cancel(job.id, job.attempt)
            await self.bus.publish(self.bus.subjects.control(job.node), body)


def _part(group: Group, host: str, now: float) -> Job:
    spec = group.part_spec(host)
    job_id = part_job_id(group.id, host)
    return Job(id=job_id, spec=spec, state=JobState.PENDING, submitted_at=now, updated_at=now)


def _ended_part(group: Group, host: str, reason: str, now: float) -> Job:
    """The record of a target that never ran: its result is its reason (unreachable:,
    skipped:), kept where every other part's result is."""
    job = _part(group, host, now)
    job.state = JobState.CANCELED
    job.reason = reason
    return job


def _ended_at(job: Job) -> float | None:
    if not job.state.final or not job.attempts:
        return None
    return job.attempts[-1].ended_at


def _log_part(group: Group, job: Job) -> None:
    host = job.spec.node
    if job.state.final:
        log.info("fleet run %s: %s %s", group.id, host, job.reason, extra={"job_id": job.id})
    else:
        log.info(
            "fleet run %s: started on %s: job %s", group.id, host, job.id, extra={"job_id": job.id}
        )


def _decode(key: str, raw: bytes) -> Group | None:
    return decode_group(KV(key, raw, 0, 0, 0))
