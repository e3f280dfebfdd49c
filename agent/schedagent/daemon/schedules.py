"""The leader's schedule loop: fires each slot of each schedule once, fenced, across failovers.

Runs only while this agent leads, beside the scheduler. For each schedule it reads the
state record, asks core/schedplan.py for the next step and writes it in one fenced
transaction with the slot's job (etcd/schedstore.py); the job's id comes from
(schedule, slot), so a new leader, a retried write or two leaders for a moment can
never make a second job for one slot. A new leader's `led_since` is when its loop
started: slots that came due before it came while nobody led, and catch-up decides.

A schedule with `after` has each slot's run wait for its parents' runs of that slot:
each pass takes the parents first, and a child's slot fires only once every parent has
handled it (so the runs it waits for exist), or is skipped if a parent did not run it
(core/schedafter.py).

A fleet schedule's slot fires one fleet run: its group (daemon/schedfleet.py) is written
in the step's transaction instead of a job, and the fleet loop rolls it out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from schedagent.core import schedafter, schedplan, transitions, wire
from schedagent.core.fleet import Group
from schedagent.core.model import Job, JobState
from schedagent.core.names import Keys
from schedagent.core.schedplan import Fire, ScheduleState, Skip, Step
from schedagent.core.schedule import Schedule
from schedagent.core.slots import slot_job_id
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.schedfleet import NO_HOSTS, SlotGroups
from schedagent.errors import FencedError, NotFoundError, StoreUnavailableError
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.mirror import Entry, Mirror
from schedagent.etcd.schedstore import ScheduleStore, decode_schedule
from schedagent.etcd.store import KV, Compare
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

IDLE_WAKEUP = 5.0
RETRY_DELAY = 1.0
STEPS_PER_PASS = 64  # one schedule far behind does not hold up the others
WAIT_FLOOR = 0.1  # a child waiting for a parent that is itself behind looks again so soon


class ScheduleLoop:
    def __init__(
        self,
        keys: Keys,
        jobs: JobStore,
        bus: Bus,
        fence: Sequence[Compare],
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.metrics = metrics or AgentMetrics()
        self.jobs = jobs
        self.bus = bus
        self.fence = list(fence)
        self.schedules = ScheduleStore(jobs.store, keys)
        self.slot_groups = SlotGroups(jobs.store, keys, self.fence)
        self.view: Mirror[Schedule] = Mirror(jobs.store, keys.schedules, _decode)
        self.led_since = time.time()
        # key -> (the schedule's mod revision, when its next slot is due)
        self.due: dict[str, tuple[int, float]] = {}
        self.by_name: dict[str, tuple[str, Schedule]] = {}  # name -> (key, schedule)
        self.cyclic: dict[str, str] = {}  # name -> why its slots are skipped (after cycle)

    async def run(self) -> None:
        await self.view.drive(self.run_pass)

    async def run_pass(self) -> float:
        """Advance every schedule whose next slot is due; seconds until one is."""
        now = time.time()
        items = dict(self.view.items)
        for key in set(self.due) - set(items):
            del self.due[key]
        self.by_name = {entry.value.name: (key, entry.value) for key, entry in items.items()}
        order, self.cyclic = schedafter.parents_first(
            {name: schedule.definition.after for name, (_, schedule) in self.by_name.items()}
        )
        for name in order:  # parents first: a child's slot sees its parents' step of it
            key = self.by_name[name][0]
            entry = items[key]
            cached = self.due.get(key)
            if cached is None or cached[0] != entry.mod_revision or cached[1] <= now:
                self.due[key] = (entry.mod_revision, await self._advance_safely(entry))
        soonest = min((due for _, due in self.due.values()), default=now + IDLE_WAKEUP)
        return min(max(soonest - time.time(), 0.01), IDLE_WAKEUP)

    async def _advance_safely(self, entry: Entry[Schedule]) -> float:
        try:
            return await self.advance(entry.value, entry.mod_revision)
        except StoreUnavailableError as exc:
            log.warning("schedule %s: cannot advance now: %s", entry.value.name, exc)
            return time.time() + RETRY_DELAY

    async def advance(self, schedule: Schedule, read_at: int) -> float:
        """Take the schedule's due steps; when to look again."""
        for _ in range(STEPS_PER_PASS):
            stored, state_revision = await self.schedules.state(schedule.name)
            state = schedplan.state_for(schedule, stored)
            live = await self._live(schedule, state.live)
            step = schedplan.decide(schedule, state, time.time(), self.led_since, live)
            if step is None:
                return schedplan.next_due(schedule, state)
            if isinstance(step, Fire) and schedule.definition.after:
                ruled = await self._after_parents(schedule, step)
                if isinstance(ruled, float):
                    return ruled
                step = ruled
            if not await self._apply(schedule, read_at, (state, state_revision), step, live):
                return time.time()  # the schedule changed meanwhile: its new version next
        return time.time()

    async def _live(self, schedule: Schedule, run_ids: Sequence[str]) -> set[str]:
        """Which of the schedule's runs still run (a fleet schedule's: its groups)."""
        if not run_ids:
            return set()
        if schedule.definition.fleet is not None:
            return await self.slot_groups.live(run_ids)
        return await self.schedules.live(run_ids)

    async def _after_parents(self, schedule: Schedule, step: Fire) -> Step | float:
        """The step, a Skip (a parent has no run of the slot, and will not), or when to
        look again (a parent has not handled the slot yet)."""
        if schedule.name in self.cyclic:
            return Skip(step.slot, step.slot, 1, self.cyclic[schedule.name])
        outcomes = {
            name: await self._parent_slot(name, step.slot) for name in schedule.definition.after
        }
        ruled = schedafter.gate(step.slot, outcomes)
        if ruled is None:
            return step
        if isinstance(ruled, Skip):
            return ruled
        # The parents' next steps are due then (they were just advanced: parents first).
        floor = time.time() + WAIT_FLOOR
        return max([floor] + [self.due.get(self.by_name[p][0], (0, floor))[1] for p in ruled])

    async def _parent_slot(self, name: str, slot: int) -> schedafter.ParentSlot:
        """What parent `name` did with the slot, as its records say (a job read only
        when the slot's outcome has left its recent ones)."""
        parent = self.by_name[name][1] if name in self.by_name else None
        stored = None if parent is None else (await self.schedules.state(name))[0]
        outcome = schedafter.parent_slot(parent, stored, slot)
        if outcome is schedafter.Outcome.UNKNOWN:
            outcome = schedafter.known(outcome, await self._exists(slot_job_id(name, slot)))
        return outcome

    async def _apply(
        self,
        schedule: Schedule,
        read_at: int,
        state: tuple[ScheduleState, int],
        step: Step,
        live: set[str],
    ) -> bool:
        """Write one step; False if the schedule or its state changed under it."""
        current, revision = state
        made = None
        if isinstance(step, Fire):
            made = await self._made(schedule, step.slot)
            if made is None:
                step = Skip(step.slot, step.slot, 1, NO_HOSTS)
            for run_id in step.cancel if isinstance(step, Fire) else ():
                await self._cancel(run_id, schedule)
        kind = "group" if isinstance(made, Group) else "job"
        new = schedplan.record(current, step, live, None if made is None else made.id, kind)
        where = (schedule.name, read_at)
        if await self.schedules.step(where, (new, revision), made, self.fence):
            _log_step(schedule, step, made)
            self._count(step)
            if isinstance(made, Job):
                await self.bus.publish_event(made)
            return True
        if not await self.jobs.fence_holds(self.fence):
            raise FencedError("the election key changed: another agent leads now")
        if made is not None and await self._made_exists(made):
            # The slot has its job or group (a write whose answer was lost, state from
            # an older version): record the step without making a second one.
            return await self.schedules.step(where, (new, revision), None, self.fence)
        return False

    async def _made(self, schedule: Schedule, slot: int) -> Job | Group | None:
        """What a slot fires: its job, or a fleet schedule's group (None: no host)."""
        if schedule.definition.fleet is not None:
            return await self.slot_groups.make(schedule, slot)
        return _slot_job(schedule, slot)

    async def _made_exists(self, made: Job | Group) -> bool:
        if isinstance(made, Group):
            return await self.slot_groups.exists(made.id)
        return await self._exists(made.id)

    def _count(self, step: Step) -> None:
        if isinstance(step, Skip):
            # A skip too long to count (count None) is counted as one.
            self.metrics.schedule_slots.labels("skipped").inc(step.count or 1)
        else:
            self.metrics.schedule_slots.labels("fired").inc()

    async def _exists(self, job_id: str) -> bool:
        try:
            await self.jobs.get(job_id)
        except NotFoundError:
            return False
        return True

    async def _cancel(self, run_id: str, schedule: Schedule) -> None:
        """Cancel an earlier run (concurrency replace), fenced, as `schedctl cancel` does."""
        if schedule.definition.fleet is not None:
            await self.slot_groups.cancel(run_id, schedule.name)
        else:
            await self._cancel_job(run_id, schedule.name)

    async def _cancel_job(self, job_id: str, name: str) -> None:
        try:
            job, changed = await self.jobs.update(
                job_id, lambda j: transitions.cancel(j, time.time()), self.fence
            )
        except NotFoundError:
            return
        if not changed:
            return
        log.info("schedule %s: canceled run %s (replace)", name, job_id, extra={"job_id": job_id})
        await self.bus.publish_event(job)
        if job.state == JobState.RUNNING and job.node is not None:
            body = wire.cancel(job.id, job.attempt)
            await self.bus.publish(self.bus.subjects.control(job.node), body)


def _slot_job(schedule: Schedule, slot: int) -> Job:
    now = time.time()
    spec = schedule.slot_spec(slot)
    job_id = schedule.slot_job_id(slot)
    return Job(id=job_id, spec=spec, state=JobState.PENDING, submitted_at=now, updated_at=now)


def _log_step(schedule: Schedule, step: Step, made: Job | Group | None) -> None:
    if isinstance(step, Skip):
        log.info(
            "schedule %s: slots %d..%d skipped: %s",
            schedule.name,
            step.first,
            step.last,
            step.reason,
        )
    elif isinstance(made, Group):
        log.info(
            "schedule %s: slot %d fired: fleet run %s on %d hosts",
            schedule.name,
            step.slot,
            made.id,
            len(made.targets),
        )
    elif made is not None:
        log.info(
            "schedule %s: slot %d fired: job %s",
            schedule.name,
            step.slot,
            made.id,
            extra={"job_id": made.id},
        )


def _decode(key: str, raw: bytes) -> Schedule | None:
    return decode_schedule(KV(key, raw, 0, 0, 0))
