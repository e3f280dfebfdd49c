"""The leader's loop: place jobs by free CPU, re-dispatch stalled ones, recover lost nodes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from schedagent.config import AgentConfig
from schedagent.core import transitions
from schedagent.core.model import Job, JobState, NodeRecord
from schedagent.core.names import Keys
from schedagent.core.placement import NodeView, PlacementIndex, free_cpus
from schedagent.errors import FencedError
from schedagent.etcd import malformed
from schedagent.etcd.jobstore import JobStore, decode_job
from schedagent.etcd.mirror import Entry, Mirror
from schedagent.etcd.store import KV, Absent, Compare, ModRevisionIs, Store
from schedagent.nats.bus import Bus
from schedagent.tasks import cancel_and_wait

log = logging.getLogger(__name__)

IDLE_WAKEUP = 5.0
# etcd allows 128 operations per transaction by default (--max-txn-ops).
PLACE_BATCH = 64


def _decode_node(key: str, raw: bytes) -> NodeRecord | None:
    try:
        return NodeRecord.from_json(raw)
    except ValueError as exc:
        malformed.note("node", key, raw, exc)
        return None


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
    ) -> None:
        self.config = config
        self.suspects = suspects
        self.store = store
        self.jobs = jobs
        self.bus = bus
        self.fence = list(fence)
        self.backoff = transitions.Backoff(config.jobs.retry_backoff, config.jobs.retry_backoff_max)
        self.job_view: Mirror[Job] = Mirror(store, keys.jobs, _decode_active)
        self.node_view: Mirror[NodeRecord] = Mirror(store, keys.nodes, _decode_node)
        self.dispatched_at: dict[tuple[str, int], float] = {}
        self.dispatches: dict[tuple[str, int], int] = {}  # how often each was sent
        self.pending_seen: dict[tuple[str, int], float] = {}  # when each was first seen
        self.shunned: dict[str, float] = {}  # node -> until when it gets no new work

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.job_view.run())
            tg.create_task(self.node_view.run())
            await self.job_view.synced.wait()
            await self.node_view.synced.wait()
            log.info(
                "scheduler view rebuilt from etcd: %d jobs, %d nodes",
                len(self.job_view.items),
                len(self.node_view.items),
            )
            while True:
                wake_in = await self.reconcile()
                await self._wait(wake_in)

    async def _wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a timer, not a deadline
        waiters = [asyncio.create_task(m.changed.wait()) for m in (self.job_view, self.node_view)]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(*waiters)

    async def reconcile(self) -> float:
        """One pass over the view; returns how long until a timer needs another pass."""
        self.job_view.changed.clear()
        self.node_view.changed.clear()
        now = time.time()
        nodes = {e.value.name: e.value for e in self.node_view.items.values()}
        entries = sorted(self.job_view.items.values(), key=lambda e: e.value.id)
        active = [e for e in entries if not e.value.state.final]
        self._forget_dispatches(active)
        await self._recover_lost(active, nodes, now)
        wake_in = await self._redispatch(active, now)
        return min(wake_in, await self._place(active, nodes, now))

    def _forget_dispatches(self, active: list[Entry[Job]]) -> None:
        live = {(e.value.id, e.value.attempt) for e in active if e.value.state == JobState.ASSIGNED}
        for key in self.dispatched_at.keys() - live:
            del self.dispatched_at[key]
            self.dispatches.pop(key, None)
        queued = {
            (e.value.id, e.value.attempt) for e in active if e.value.state == JobState.PENDING
        }
        for key in self.pending_seen.keys() - queued:
            del self.pending_seen[key]

    async def _recover_lost(
        self, active: list[Entry[Job]], nodes: dict[str, NodeRecord], now: float
    ) -> None:
        for entry in active:
            job: Job = entry.value
            node = nodes.get(job.node or "")
            lease, started = (node.lease, node.started_at) if node is not None else (None, 0.0)
            reason = transitions.lost_reason(job, lease, started)
            if reason is None:
                continue
            new = transitions.lose(_clone(job), job.node or "", reason, self.backoff, now)
            # Decided on the node record as read: compared with the job's, so a node
            # that came back (or changed) meanwhile makes the verdict fail, not stand.
            node_key = self.jobs.keys.node(job.node or "")
            seen = self.node_view.items.get(node_key)
            node_compare = (
                Absent(node_key) if seen is None else ModRevisionIs(node_key, seen.mod_revision)
            )
            if new is not None and await self._write(new, entry.mod_revision, [node_compare]):
                log.warning("job %s attempt %d on %s: %s", job.id, job.attempt, job.node, reason)

    async def _redispatch(self, active: list[Entry[Job]], now: float) -> float:
        timeout = self.config.jobs.dispatch_timeout
        wake_in = IDLE_WAKEUP
        for entry in active:
            job: Job = entry.value
            if job.state != JobState.ASSIGNED or job.node is None:
                continue
            sent = self.dispatched_at.get((job.id, job.attempt))
            if sent is None or now - sent >= timeout:
                if await self._hand_back_stalled(entry, now):
                    continue
                # Placed by a predecessor (its dispatch may be lost) or not taken up in time.
                log.info("dispatching job %s attempt %d to %s again", job.id, job.attempt, job.node)
                await self._dispatch(job, now)
                sent = now
            wake_in = min(wake_in, max(timeout - (now - sent), 0.1))
        return wake_in

    async def _hand_back_stalled(self, entry: Entry[Job], now: float) -> bool:
        """An attempt its live node has not taken up after several dispatches goes back
        to the queue (its consumer may be gone, its agent wedged): whether it went."""
        job = entry.value
        sent = self.dispatches.get((job.id, job.attempt), 0)
        new = transitions.stalled(_clone(job), sent, now)
        if new is None or not await self._write(new, entry.mod_revision):
            return False
        log.warning("job %s attempt %d on %s: %s", job.id, job.attempt, job.node, new.reason)
        # Its next placement should not go back to the node that did not take it up.
        self.shunned[job.node or ""] = now + sent * self.config.jobs.dispatch_timeout
        return True

    async def _place(
        self, active: list[Entry[Job]], nodes: dict[str, NodeRecord], now: float
    ) -> float:
        # Suspect nodes (a leader that fell silent) take no new work, like draining ones.
        suspect = self.suspects() | {n for n, until in self.shunned.items() if until > now}
        views = [
            NodeView(n.name, n.cpus, n.labels, n.draining or n.name in suspect)
            for n in nodes.values()
        ]
        index = PlacementIndex(views, free_cpus(views, (e.value for e in active)))
        wake_in = IDLE_WAKEUP
        batch: list[tuple[Job, int]] = []
        for entry in active:
            job: Job = entry.value
            if job.state != JobState.PENDING:
                continue
            # On this leader's clock: the backoff from when it first saw the retry.
            seen = self.pending_seen.setdefault((job.id, job.attempt), now)
            eligible = transitions.eligible_at(job, seen)
            if eligible > now:
                wake_in = min(wake_in, eligible - now)
                continue
            new = transitions.settle_cancel(_clone(job)) or self._choose(index, job, now)
            if new is None:
                continue
            batch.append((new, entry.mod_revision))
            if len(batch) == PLACE_BATCH:
                await self._assign(batch, now)
                batch = []
        await self._assign(batch, now)
        return wake_in

    def _choose(self, index: PlacementIndex, job: Job, now: float) -> Job | None:
        target = index.choose(job.spec)
        new = None if target is None else transitions.assign(_clone(job), target, now)
        if target is not None and new is not None:
            index.take(target, job.spec.cpus)
        return new

    async def _assign(self, batch: list[tuple[Job, int]], now: float) -> None:
        """Write a batch of placements in one transaction, then dispatch them together.

        If any job changed meanwhile the transaction fails as a whole; then each is
        written alone, so one conflict does not hold back the others.
        """
        if not batch:
            return
        written = await self.jobs.write_many(batch, self.fence)
        if written:
            placed = [job for job, _ in batch]
            for job in placed:
                self.job_view.note_write(self.jobs.keys.job(job.id), written, job)
        else:
            await self._check_fence()
            placed = [job for job, revision in batch if await self._write(job, revision)]
        await asyncio.gather(*(self.bus.publish_event(job) for job in placed if written))
        await asyncio.gather(*(self._dispatch(job, now) for job in placed))

    async def _dispatch(self, job: Job, now: float) -> None:
        if job.node is None or job.state != JobState.ASSIGNED:
            return
        self.dispatched_at[(job.id, job.attempt)] = now
        self.dispatches[(job.id, job.attempt)] = self.dispatches.get((job.id, job.attempt), 0) + 1
        try:
            await self.bus.publish_dispatch(job.node, job.id, job.attempt)
        except Exception as exc:
            log.warning("dispatch of job %s to %s failed (%s); will retry", job.id, job.node, exc)

    async def _write(self, job: Job, revision: int, compares: Sequence[Compare] = ()) -> bool:
        written = await self.jobs.write(job, revision, [*self.fence, *compares])
        if written:
            self.job_view.note_write(self.jobs.keys.job(job.id), written, job)
            await self.bus.publish_event(job)
            return True
        await self._check_fence()
        return False  # the job changed under us; the watch brings the new version

    async def _check_fence(self) -> None:
        if not await self.jobs.fence_holds(self.fence):
            raise FencedError("the election key changed: another agent leads now")


def _decode_active(key: str, raw: bytes) -> Job | None:
    """Jobs the scheduler still has to act on; final ones are left out of its view."""
    job = decode_job(KV(key, raw, 0, 0, 0))
    return None if job is None or job.state.final else job


def _clone(job: Job) -> Job:
    return job.clone()
