"""The leader's loop: place jobs by free CPU, re-dispatch stalled ones, recover lost nodes.

The decisions come from core/leaderview.py, which the watch keeps up to date one
changed record at a time; this module does the I/O: fenced writes, dispatches, events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from schedagent.config import AgentConfig
from schedagent.core import fencing, transitions
from schedagent.core.cordon import Cordon
from schedagent.core.leaderview import Decision, LeaderView
from schedagent.core.model import Job, JobState, NodeRecord
from schedagent.core.names import Keys
from schedagent.daemon.metrics import AgentMetrics
from schedagent.errors import FencedError, NotFoundError
from schedagent.etcd.cordonstore import decode_cordon
from schedagent.etcd.jobstore import JobStore, decode_job, decode_node
from schedagent.etcd.mirror import Entry, Mirror
from schedagent.etcd.store import KV, Absent, Compare, ModRevisionIs, Store
from schedagent.nats.bus import Bus
from schedagent.tasks import cancel_and_wait

log = logging.getLogger(__name__)

IDLE_WAKEUP = 5.0
# etcd allows 128 operations per transaction by default (--max-txn-ops).
PLACE_BATCH = 64
MIN_WAKEUP = 0.01
# Parents read from etcd at once when the view asks for their end.
PARENT_READS = 64


class Scheduler:
    """Runs while this agent leads; every write carries the leader's fence."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        keys: Keys,
        jobs: JobStore,
        bus: Bus,
        fence: Sequence[Compare],
        suspects: Callable[[], set[str]] = set,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or AgentMetrics()
        self.suspects = suspects
        self.store = store
        self.jobs = jobs
        self.bus = bus
        self.fence = list(fence)
        backoff = transitions.Backoff(config.jobs.retry_backoff, config.jobs.retry_backoff_max)
        grace = fencing.lost_grace(config.node_ttl)
        self.view = LeaderView(config.jobs.dispatch_timeout, backoff, grace, keys.job)
        self.job_view: Mirror[Job] = Mirror(store, keys.jobs, _decode_active)
        self.node_view: Mirror[NodeRecord] = Mirror(store, keys.nodes, _decode_node)
        self.cordon_view: Mirror[Cordon] = Mirror(store, keys.cordons, decode_cordon)
        # Keys changed since the last pass; the view takes them in at the pass's start,
        # in this task, so nothing changes under a pass while it awaits a write.
        self.changed_jobs: dict[str, None] = {}
        self.changed_nodes: dict[str, None] = {}
        # The mod revision of each node record as the view took it in: a verdict on a
        # node is written compared with the record it was decided from.
        self.node_revisions: dict[str, int] = {}
        self.shunned: dict[str, float] = {}  # node -> until when it gets no new work
        self.job_view.listen(self._job_changed, self._jobs_reread)
        self.node_view.listen(self._node_changed, self._nodes_reread)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.job_view.run())
            tg.create_task(self.node_view.run())
            tg.create_task(self.cordon_view.run())
            await self.job_view.synced.wait()
            await self.node_view.synced.wait()
            await self.cordon_view.synced.wait()
            log.info(
                "scheduler view rebuilt from etcd: %d jobs, %d nodes",
                len(self.job_view.items),
                len(self.node_view.items),
            )
            while True:
                wake_in = await self.reconcile()
                await self._wait(wake_in)

    async def _wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a timer, not a deadline
        views = (self.job_view, self.node_view, self.cordon_view)
        waiters = [asyncio.create_task(m.changed.wait()) for m in views]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(*waiters)

    async def reconcile(self) -> float:
        """One pass over what changed; returns how long until a timer needs another pass."""
        self.job_view.changed.clear()
        self.node_view.changed.clear()
        self.cordon_view.changed.clear()
        now = time.time()
        self._take_changes(now)
        await self._follow_parents(now)
        await self._recover_lost(now)
        await self._redispatch(now)
        await self._place(now)
        next_timer = self.view.next_timer()
        wake_at = now + IDLE_WAKEUP if next_timer is None else min(next_timer, now + IDLE_WAKEUP)
        return max(wake_at - time.time(), MIN_WAKEUP)

    def _job_changed(self, key: str, old: Entry[Job] | None, new: Entry[Job] | None) -> None:
        self.changed_jobs[key] = None

    def _node_changed(
        self, key: str, old: Entry[NodeRecord] | None, new: Entry[NodeRecord] | None
    ) -> None:
        self.changed_nodes[key] = None

    def _jobs_reread(self) -> None:
        self.changed_jobs.update(dict.fromkeys([*self.view.jobs, *self.job_view.items]))

    def _nodes_reread(self) -> None:
        self.changed_nodes.update(dict.fromkeys([*self.view.node_names, *self.node_view.items]))

    def _take_changes(self, now: float) -> None:
        """Bring the view up to date with the records that changed since the last pass."""
        nodes, self.changed_nodes = self.changed_nodes, {}
        for key in nodes:
            node = self.node_view.items.get(key)
            if node is None:
                self._count_loss(key)
            self.view.set_node(key, None if node is None else node.value)
            if node is None:
                self.node_revisions.pop(key, None)
            else:
                self.node_revisions[key] = node.mod_revision
        # Polled: a node's suspicion ends with time, not with an event.
        shunned = {name for name, until in self.shunned.items() if until > now}
        self.view.set_suspects(self.suspects() | shunned)
        # A handful of records at most: read whole each pass, not followed key by key.
        self.view.set_cordoned(entry.value.node for entry in self.cordon_view.items.values())
        jobs, self.changed_jobs = self.changed_jobs, {}
        for key in jobs:
            entry = self.job_view.items.get(key)
            if entry is None:
                self.view.set_job(key, None, 0, now)
            else:
                self.view.set_job(key, entry.value, entry.mod_revision, now)

    async def _follow_parents(self, now: float) -> None:
        """Tell the view how the parents it cannot see ended, then end the children
        whose parent did not succeed (fenced, like every leader write)."""
        lookups = self.view.parent_lookups()
        for start in range(0, len(lookups), PARENT_READS):
            chunk = lookups[start : start + PARENT_READS]
            ends = await asyncio.gather(*(self._parent_end(job_id) for job_id in chunk))
            for job_id, (final, state) in zip(chunk, ends, strict=True):
                if final:
                    self.view.parent_ended(job_id, state, now)
        for decision in self.view.unrun_ends():
            if await self._write(decision):
                log.info("job %s: %s", decision.job.id, decision.reason)
            else:
                self.view.forget(decision.key)

    async def _parent_end(self, job_id: str) -> tuple[bool, JobState | None]:
        """(True, its final state) or (True, None) if it has no record; (False, None)
        if it is live (the watch brings it to the view)."""
        try:
            job, _ = await self.jobs.get(job_id)
        except NotFoundError:
            return True, None
        return (True, job.state) if job.state.final else (False, None)

    async def _recover_lost(self, now: float) -> None:
        # The grace is timed on the monotonic clock: a step of the wall clock must not
        # cut it short (docs/semantics.md, "Fenced execution").
        for decision in self.view.lost(now, time.monotonic()):
            job = self.view.jobs[decision.key].job
            # Decided on the node record as the view read it: compared with the job's,
            # so a node that came back (or changed) meanwhile makes the verdict fail.
            node_key = self.jobs.keys.node(job.node or "")
            seen = self.node_revisions.get(node_key)
            node = Absent(node_key) if seen is None else ModRevisionIs(node_key, seen)
            if await self._write(decision, [node]):
                log.warning(
                    "job %s attempt %d on %s: %s", job.id, job.attempt, job.node, decision.reason
                )

    async def _redispatch(self, now: float) -> None:
        for job in self.view.due_dispatches(now):
            if await self._hand_back_stalled(job, now):
                continue
            # Placed by a predecessor (its dispatch may be lost) or not taken up in time.
            log.info("dispatching job %s attempt %d to %s again", job.id, job.attempt, job.node)
            await self._dispatch(job, self.view.jobs[self.jobs.keys.job(job.id)].revision)

    async def _hand_back_stalled(self, job: Job, now: float) -> bool:
        """An attempt its live node has not taken up after several dispatches goes back
        to the queue (its consumer may be gone, its agent wedged): whether it went."""
        key = self.jobs.keys.job(job.id)
        tracked, sent = self.view.jobs[key], self.view.dispatches[key].count - 1
        new = transitions.stalled(job.clone(), sent, now)
        if new is None or not await self._write(Decision(key, new, tracked.revision)):
            return False
        log.warning("job %s attempt %d on %s: %s", job.id, job.attempt, job.node, new.reason)
        # Its next placement should not go back to the node that did not take it up.
        self.shunned[job.node or ""] = now + sent * self.config.jobs.dispatch_timeout
        return True

    async def _place(self, now: float) -> None:
        self.view.release_due(now)
        while batch := self.view.placements(now, PLACE_BATCH):
            await self._assign(batch)

    async def _assign(self, batch: list[Decision]) -> None:
        """Write a batch of placements in one transaction, then dispatch them together.

        If any job changed meanwhile the transaction fails as a whole; then each is
        written alone, so one conflict does not hold back the others.
        """
        written = await self.jobs.write_many([(d.job, d.revision) for d in batch], self.fence)
        placed: list[tuple[Decision, int]] = []
        if written:
            for decision in batch:
                self.job_view.note_write(decision.key, written, decision.job)
                placed.append((decision, written))
        else:
            await self._check_fence()
            for decision in batch:
                revision = await self._write(decision)
                if revision:
                    placed.append((decision, revision))
                else:
                    self.view.forget(decision.key)
        self._count_placements([d for d, _ in placed])
        await asyncio.gather(*(self.bus.publish_event(d.job) for d, _ in placed if written))
        await asyncio.gather(*(self._dispatch(d.job, revision) for d, revision in placed))

    def _count_loss(self, key: str) -> None:
        """A node record gone without draining first (an agent that stops drains)."""
        record = self.view.records.get(self.view.node_names.get(key, ""))
        if record is not None and not record.draining:
            self.metrics.nodes_lost.inc()

    def _count_placements(self, placed: list[Decision]) -> None:
        now = time.time()
        for decision in placed:
            if decision.job.state != JobState.ASSIGNED:
                continue  # a cancel settled on the way
            self.metrics.placements.inc()
            if decision.placeable_since:
                self.metrics.placement_latency.observe(max(0.0, now - decision.placeable_since))

    async def _dispatch(self, job: Job, revision: int) -> None:
        """Send the attempt to its node, with the record as written at revision."""
        if job.node is None:
            return
        try:
            await self.bus.publish_dispatch(job.node, job, revision)
        except Exception as exc:
            log.warning("dispatch of job %s to %s failed (%s); will retry", job.id, job.node, exc)

    async def _write(self, decision: Decision, compares: Sequence[Compare] = ()) -> int:
        """The decision written, fenced: its revision, or 0 if the job changed."""
        written = await self.jobs.write(decision.job, decision.revision, [*self.fence, *compares])
        if written:
            self.job_view.note_write(decision.key, written, decision.job)
            await self.bus.publish_event(decision.job)
            return written
        await self._check_fence()
        return 0  # the job changed under us; the watch brings the new version

    async def _check_fence(self) -> None:
        if not await self.jobs.fence_holds(self.fence):
            raise FencedError("the election key changed: another agent leads now")


def _decode_node(key: str, raw: bytes) -> NodeRecord | None:
    return decode_node(KV(key, raw, 0, 0, 0))


def _decode_active(key: str, raw: bytes) -> Job | None:
    """Jobs the scheduler still has to act on; final ones are left out of its view."""
    job = decode_job(KV(key, raw, 0, 0, 0))
    return None if job is None or job.state.final else job
