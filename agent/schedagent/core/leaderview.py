"""The leader's view, kept as records change: what to place, dispatch again or recover (pure).

The scheduler feeds it every changed job and node record and asks it for decisions;
each change costs O(log n) in the jobs and nodes it holds, so a node's load refresh
or one job's end does not make it look at every job again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from schedagent.core import fencing, transitions
from schedagent.core.deps import Dependencies, waits_for_parents
from schedagent.core.model import Job, JobState, NodeRecord
from schedagent.core.pending import PendingQueue, Shape
from schedagent.core.placement import NodeView, PlacementIndex
from schedagent.core.timers import Timers
from schedagent.core.usage import NodeUsage


@dataclasses.dataclass(frozen=True)
class Tracked:
    job: Job
    revision: int


@dataclasses.dataclass(frozen=True)
class Decision:
    """A record to write: the job's next version, compared at the revision it was read."""

    key: str
    job: Job
    revision: int
    reason: str = ""
    # A placement: since when the job was placeable (its last change or not_before).
    placeable_since: float = 0.0


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """The leader's last dispatch of a job's current ASSIGNED attempt."""

    sent: float
    count: int = 1


def node_view(record: NodeRecord, held_back: bool) -> NodeView:
    """What placement reads of a node record (not its load, memory or usage figures);
    held_back: suspect or cordoned, so it takes no new work as if draining."""
    return NodeView(record.name, record.cpus, record.labels, record.draining or held_back)


def _pending(tracked: Tracked | None) -> tuple[str, Shape, float, float] | None:
    if tracked is None or tracked.job.state != JobState.PENDING:
        return None
    job = tracked.job
    return job.id, Shape.of(job.spec), job.not_before, job.updated_at


def _holding(tracked: Tracked | None) -> tuple[str, float] | None:
    if tracked is None or not tracked.job.state.holds_cpus or tracked.job.node is None:
        return None
    return tracked.job.node, tracked.job.spec.cpus


def _assigned(tracked: Tracked | None) -> tuple[int, str | None] | None:
    if tracked is None or tracked.job.state != JobState.ASSIGNED:
        return None
    return tracked.job.attempt, tracked.job.node


class LeaderView:
    """Jobs that are not final and node records, by etcd key, with what follows from them:
    the pending queue, CPUs held per node, the placement index and the timers."""

    def __init__(
        self,
        dispatch_timeout: float,
        backoff: transitions.Backoff,
        lost_grace: float = 0.0,
        job_key: Callable[[str], str] = "jobs/".__add__,
    ) -> None:
        self.dispatch_timeout = dispatch_timeout
        self.backoff = backoff
        # A RUNNING attempt whose node is lost is closed only once seen so this long
        # (its agent has killed it by then: core/fencing.py, lost_grace).
        self.lost_grace = lost_grace
        self.jobs: dict[str, Tracked] = {}
        self.records: dict[str, NodeRecord] = {}  # node name -> its record
        self.node_names: dict[str, str] = {}  # node record key -> node name
        self.views: dict[str, NodeView] = {}  # node name -> what placement sees
        self.suspect: frozenset[str] = frozenset()
        self.cordoned: frozenset[str] = frozenset()  # an operator's cordon or drain
        self.usage = NodeUsage()
        self.index = PlacementIndex()
        self.queue = PendingQueue()
        self.waiting: Timers[str] = Timers()  # PENDING jobs not due yet, by not_before
        self.redispatch: Timers[str] = Timers()  # ASSIGNED jobs, by their dispatch deadline
        self.dispatches: dict[str, Dispatch] = {}
        self.unchecked: set[str] = set()  # jobs whose attempt may have lost its agent
        # Jobs whose current attempt was seen lost: since when (on lost()'s clock), and
        # when to look again; forgotten when the job leaves the view or its attempt moves.
        self.lost_since: dict[str, float] = {}
        self.lost_wait: Timers[str] = Timers()
        self.deps = Dependencies()  # PENDING jobs held until their parents SUCCEEDED
        self.job_key = job_key  # a job id's etcd key (core/names.py Keys.job)

    # Changes in ---------------------------------------------------------------

    def set_job(self, key: str, job: Job | None, revision: int, now: float) -> None:
        """The job record at key is now `job` (None or final: gone from the view)."""
        old = self.jobs.get(key)
        new = None if job is None or job.state.final else Tracked(job, revision)
        self._track_parents(key, old, new, job, now)
        self._requeue(key, old, new, now)
        self._rehold(key, old, new)
        self._redispatch(key, old, new, now)
        if new is None or (old is not None and old.job.attempt != new.job.attempt):
            self.lost_since.pop(key, None)
            self.lost_wait.cancel(key)
        if new is None:
            self.jobs.pop(key, None)
            self.unchecked.discard(key)
        else:
            self.jobs[key] = new
            if new.job.state.holds_cpus:
                self.unchecked.add(key)

    def forget(self, key: str) -> None:
        """Our write of the job lost a race: leave it out until its record's next version."""
        self.set_job(key, None, 0, 0.0)

    def set_node(self, key: str, record: NodeRecord | None) -> None:
        """The node record at key is now `record` (None: deleted)."""
        name = self.node_names.get(key)
        if name is not None and (record is None or record.name != name):
            del self.node_names[key]
            self.records.pop(name, None)
            self._set_view(name, None)
            self.unchecked |= self.usage.jobs_on(name)
        if record is None:
            return
        old = self.records.get(record.name)
        self.node_names[key] = record.name
        self.records[record.name] = record
        self._set_view(record.name, node_view(record, self._held_back(record.name)))
        if old is None or (old.lease, old.started_at) != (record.lease, record.started_at):
            self.unchecked |= self.usage.jobs_on(record.name)

    def set_suspects(self, names: Iterable[str]) -> None:
        """Nodes that take no new work for now (their leadership fell silent)."""
        suspect = frozenset(names)
        changed, self.suspect = suspect ^ self.suspect, suspect
        self._review(changed)

    def set_cordoned(self, names: Iterable[str]) -> None:
        """Nodes an operator cordoned (or drains): no new work until uncordoned."""
        cordoned = frozenset(names)
        changed, self.cordoned = cordoned ^ self.cordoned, cordoned
        self._review(changed)

    def _held_back(self, name: str) -> bool:
        return name in self.suspect or name in self.cordoned

    def _review(self, names: Iterable[str]) -> None:
        for name in names:
            record = self.records.get(name)
            if record is not None:
                self._set_view(name, node_view(record, self._held_back(name)))

    # Decisions out ------------------------------------------------------------

    def lost(self, now: float, clock: float | None = None) -> list[Decision]:
        """Attempts whose agent is gone (its record deleted, or a new incarnation): an
        ASSIGNED one at once, a RUNNING one once `lost_grace` has passed on `clock` (a
        monotonic reading; `now` if None) since it was first seen so."""
        found = []
        since = now if clock is None else clock
        for key in sorted(self.unchecked | set(self.lost_wait.due(now))):
            decision = self._lost(key, now, since)
            if decision is not None:
                found.append(decision)
        self.unchecked.clear()
        return found

    def _lost(self, key: str, now: float, clock: float) -> Decision | None:
        tracked = self.jobs.get(key)
        if tracked is None:
            return None
        job = tracked.job
        record = self.records.get(job.node or "")
        lease, started = (record.lease, record.started_at) if record else (None, 0.0)
        reason = transitions.lost_reason(job, lease, started)
        if reason is None:
            self.lost_since.pop(key, None)
            self.lost_wait.cancel(key)
            return None
        since = self.lost_since.setdefault(key, clock)
        wait = fencing.retry_due(job.state, since, clock, self.lost_grace)
        if wait > 0:
            self.lost_wait.schedule(key, now + wait)
            return None
        new = transitions.lose(job.clone(), job.node or "", reason, self.backoff, now)
        return None if new is None else Decision(key, new, tracked.revision, reason)

    def due_dispatches(self, now: float) -> list[Job]:
        """ASSIGNED attempts to dispatch again: not taken up within the dispatch timeout,
        or placed by a predecessor that may never have sent theirs. Counted as sent now."""
        due = []
        for key in self.redispatch.due(now):
            last = self.dispatches.get(key)
            self._sent(key, now, last.count + 1 if last else 1)
            due.append(self.jobs[key].job)
        return due

    def release_due(self, now: float) -> None:
        """PENDING jobs whose not_before has come join the queue."""
        for key in self.waiting.due(now):
            job = self.jobs[key].job
            self.queue.add(key, job.id, Shape.of(job.spec))

    def placements(self, now: float, limit: int) -> list[Decision]:
        """Up to limit placements, oldest job first, each on the eligible node with the
        most free CPUs; counted as made (CPUs taken, dispatch sent) at once."""
        found: list[Decision] = []
        while len(found) < limit and (oldest := self.queue.oldest()) is not None:
            key, shape = oldest
            tracked = self.jobs[key]
            settled = transitions.settle_cancel(tracked.job.clone())
            if settled is not None:  # its cancel was asked for (a record of an older version)
                found.append(Decision(key, settled, tracked.revision, "canceled"))
                self.set_job(key, settled, tracked.revision, now)
                continue
            target = self.index.choose(tracked.job.spec)
            if target is None:
                self.queue.block(shape)
                continue
            new = transitions.assign(tracked.job.clone(), target, now)
            if new is None:  # only PENDING jobs are queued; never loop on one that is not
                self.queue.remove(key)
                continue
            since = min(now, max(tracked.job.updated_at, tracked.job.not_before))
            found.append(Decision(key, new, tracked.revision, placeable_since=since))
            self.set_job(key, new, tracked.revision, now)
            self._sent(key, now, 1)
        return found

    def parent_lookups(self) -> list[str]:
        """Ids of parents outside the view whose end the caller must read (final under
        done/, or gone) and report through parent_ended."""
        return self.deps.take_lookups(self._live)

    def parent_ended(self, job_id: str, state: JobState | None, now: float) -> None:
        """A parent read from etcd: final in `state`, or None if no record was found."""
        self._release(self.deps.ended(job_id, state), now)

    def unrun_ends(self) -> list[Decision]:
        """Children whose parent did not succeed: each ends CANCELED, unrun."""
        found = []
        for key, reason in sorted(self.deps.doomed.items()):
            tracked = self.jobs[key]
            new = transitions.skip(tracked.job.clone(), reason)
            if new is not None:
                found.append(Decision(key, new, tracked.revision, reason))
        return found

    def next_timer(self) -> float | None:
        timers = (self.waiting, self.redispatch, self.lost_wait)
        times = [t for t in (timer.next_at() for timer in timers) if t is not None]
        return min(times, default=None)

    # Keeping the parts in step --------------------------------------------------

    def _track_parents(
        self, key: str, old: Tracked | None, new: Tracked | None, job: Job | None, now: float
    ) -> None:
        """Keep the dependency index in step: this job as a parent, and as a child."""
        if job is not None and job.state.final:
            self._release(self.deps.ended(job.id, job.state), now)
        elif new is None and old is not None:
            self.deps.left(old.job.id)
        if new is not None and waits_for_parents(new.job):
            self.deps.hold(key, new.job, self._live)
        else:
            self.deps.release(key)

    def _live(self, job_id: str) -> bool:
        return self.job_key(job_id) in self.jobs

    def _requeue(self, key: str, old: Tracked | None, new: Tracked | None, now: float) -> None:
        was, pending = _pending(old), _pending(new)
        if was == pending:
            return
        self.queue.remove(key)
        self.waiting.cancel(key)
        if new is not None and pending is not None and not self.deps.held(key):
            self._enqueue(key, new.job, now)

    def _release(self, children: list[str], now: float) -> None:
        """Children whose parents all SUCCEEDED join the queue."""
        for key in children:
            self._enqueue(key, self.jobs[key].job, now)

    def _enqueue(self, key: str, job: Job, now: float) -> None:
        """Queue a PENDING job now, or when its backoff ends."""
        # On this view's clock: the writer's backoff counted from now (no later).
        due = transitions.eligible_at(job, now)
        if due > now:
            self.waiting.schedule(key, due)
        else:
            self.queue.add(key, job.id, Shape.of(job.spec))

    def _rehold(self, key: str, old: Tracked | None, new: Tracked | None) -> None:
        was, holding = _holding(old), _holding(new)
        if was == holding:
            return
        if was is not None:
            self.usage.release(key)
            self._room_changed(was[0], grew=True)
        if holding is not None:
            self.usage.hold(key, *holding)
            self._room_changed(holding[0], grew=False)

    def _redispatch(self, key: str, old: Tracked | None, new: Tracked | None, now: float) -> None:
        was, assigned = _assigned(old), _assigned(new)
        if was == assigned:
            return
        self.dispatches.pop(key, None)
        self.redispatch.cancel(key)
        if assigned is not None:
            # Not placed by us (or by us before a restart of the view): send at once.
            self.redispatch.schedule(key, now)

    def _sent(self, key: str, now: float, count: int) -> None:
        self.dispatches[key] = Dispatch(now, count)
        self.redispatch.schedule(key, now + self.dispatch_timeout)

    def _room_changed(self, name: str, grew: bool) -> None:
        view = self.views.get(name)
        if view is None or view.draining:
            return
        free = view.cpus - self.usage.used(name)
        self.index.set_free(name, free)
        if grew:
            self.queue.unblock(view, free)

    def _set_view(self, name: str, view: NodeView | None) -> None:
        if view == self.views.get(name):
            return  # e.g. a load refresh: nothing placement reads has changed
        if view is None:
            del self.views[name]
            self.index.remove(name)
            return
        self.views[name] = view
        free = view.cpus - self.usage.used(name)
        self.index.update(view, free)
        if not view.draining:
            self.queue.unblock(view, free)
