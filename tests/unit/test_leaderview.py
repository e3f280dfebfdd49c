"""The leader's incremental view decides what a from-scratch pass over every job decides."""

from __future__ import annotations

import random

import msgspec
import pytest

from schedagent.core import transitions
from schedagent.core.leaderview import Decision, LeaderView
from schedagent.core.model import Job, JobSpec, JobState, NodeRecord, Outcome
from schedagent.core.placement import NodeView, PlacementIndex, free_cpus
from schedagent.core.tail import Tail

TIMEOUT = 5.0
BACKOFF = transitions.Backoff(1.0, 8.0)
NAMES = ["a", "b", "c", "d", "e"]
LABELS: list[dict[str, str]] = [{}, {"zone": "x"}, {"zone": "y"}, {"zone": "x", "disk": "ssd"}]


def record(name: str, cpus: float, labels: dict[str, str], lease: int, now: float) -> NodeRecord:
    return NodeRecord(
        name=name,
        hostname=name,
        cpus=cpus,
        memory_total=1 << 30,
        memory_available=1 << 29,
        load=(0.0, 0.0, 0.0),
        labels=labels,
        version="test",
        started_at=now,
        lease=lease,
    )


def pending(n: int, spec: JobSpec, not_before: float = 0.0) -> Job:
    return Job(
        id=f"{n:020x}", spec=spec, state=JobState.PENDING, submitted_at=0, not_before=not_before
    )


def reference_placements(
    jobs: list[Job], nodes: list[NodeRecord], suspects: set[str], now: float
) -> list[tuple[str, str]]:
    """The scheduler before it was incremental: every job sorted by id, a new index."""
    views = [NodeView(n.name, n.cpus, n.labels, n.draining or n.name in suspects) for n in nodes]
    active = sorted((j for j in jobs if not j.state.final), key=lambda j: j.id)
    index = PlacementIndex(views, free_cpus(views, active))
    placed = []
    for job in active:
        if job.state != JobState.PENDING or job.not_before > now:
            continue
        target = index.choose(job.spec)
        if target is not None:
            index.take(target, job.spec.cpus)
            placed.append((job.id, target))
    return placed


class World:
    """The records as etcd holds them; every change is also handed to the view."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 1000.0
        self.revision = 1
        self.jobs: dict[str, Job] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.suspects: set[str] = set()
        self.sent: dict[tuple[str, int], float] = {}  # the old scheduler's dispatched_at
        self.view = LeaderView(TIMEOUT, BACKOFF)
        self.next_id = 1000

    def put_job(self, key: str, job: Job) -> None:
        self.revision += 1
        if job.state.final:
            self.jobs.pop(key, None)
        else:
            self.jobs[key] = job
        self.view.set_job(key, job, self.revision, self.now)

    def put_node(self, name: str, node: NodeRecord | None) -> None:
        if node is None:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = node
        self.view.set_node(f"nodes/{name}", node)

    # Random changes, as workers, submitters and agents make them.

    def submit(self) -> None:
        self.next_id += 1
        # Ids from several API agents' clocks do not always arrive in order.
        n = self.next_id if self.rng.random() < 0.8 else self.rng.randrange(self.next_id)
        spec = JobSpec(
            cmd="x",
            cpus=self.rng.choice([0.5, 1.0, 1.0, 2.0, 3.0]),
            node=self.rng.choice([None, None, None, *NAMES]),
            labels=self.rng.choice(LABELS),
            retries=self.rng.choice([0, 2]),
        )
        later = self.now + self.rng.choice([0.5, 1.0, 3.0])
        job = pending(n, spec, later if self.rng.random() < 0.2 else 0.0)
        self.put_job(f"jobs/{job.id}", job)

    def change_job(self) -> None:
        if not self.jobs:
            return
        key = self.rng.choice(sorted(self.jobs))
        job, now = self.jobs[key].clone(), self.now
        node = self.nodes.get(job.node or "")
        lease = node.lease if node else 0
        action = self.rng.choice(["cancel", "start", "finish", "hand_back", "touch"])
        new: Job | None = job
        if action == "cancel":
            new = transitions.cancel(job, now)
        elif action == "start" and node is not None:
            new = transitions.start(job, job.node or "", job.attempt, now, lease)
        elif action == "finish":
            outcome = Outcome(now, now, exit_code=self.rng.choice([0, 1]))
            new = transitions.finish(job, job.node or "", job.attempt, outcome, Tail(), BACKOFF)
        elif action == "hand_back":
            new = transitions.hand_back(job, job.node or "", job.attempt, "stopping", now)
        if new is not None:
            self.put_job(key, new)

    def change_node(self) -> None:
        name = self.rng.choice(NAMES)
        old = self.nodes.get(name)
        if old is None:
            lease = self.rng.randrange(1 << 30)
            self.put_node(name, record(name, self.rng.choice([1.0, 2.0, 4.0]), {}, lease, self.now))
            return
        changes = {
            "refresh": {"load": (self.rng.random(),) * 3, "memory_available": 7, "used_cpus": 1.0},
            "cpus": {"cpus": self.rng.choice([1.0, 2.0, 4.0])},
            "labels": {"labels": self.rng.choice(LABELS)},
            "drain": {"draining": not old.draining},
            "restart": {"lease": old.lease + 1, "started_at": self.now},
        }
        action = self.rng.choice([*changes, "refresh", "refresh", "delete"])
        if action == "delete":
            self.put_node(name, None)
        else:
            self.put_node(name, msgspec.structs.replace(old, **changes[action]))

    def step(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            self.rng.choice([self.submit, self.submit, self.change_job, self.change_node])()
        if self.rng.random() < 0.1:
            self.suspects ^= {self.rng.choice(NAMES)}
        self.now += self.rng.choice([0.0, 0.25, 0.5, 1.0, 2.0])

    # One scheduler pass, compared decision by decision with the from-scratch one.

    def check_pass(self) -> None:
        self.view.set_suspects(self.suspects)
        self.check_lost()
        self.check_redispatch()
        self.check_placements()

    def check_lost(self) -> None:
        expected = []
        for key, job in sorted(self.jobs.items()):
            node = self.nodes.get(job.node or "")
            lease, started = (node.lease, node.started_at) if node else (None, 0.0)
            if transitions.lost_reason(job, lease, started) is not None:
                expected.append(key)
        decisions = self.view.lost(self.now)
        assert [d.key for d in decisions] == expected
        for decision in decisions:
            self.put_job(decision.key, decision.job)

    def check_redispatch(self) -> None:
        expected = []
        for key, job in sorted(self.jobs.items()):
            if job.state == JobState.ASSIGNED:
                sent = self.sent.get((key, job.attempt))
                if sent is None or self.now - sent >= TIMEOUT:
                    expected.append(key)
                    self.sent[(key, job.attempt)] = self.now
        assert sorted(f"jobs/{j.id}" for j in self.view.due_dispatches(self.now)) == expected

    def check_placements(self) -> None:
        expected = reference_placements(
            list(self.jobs.values()), list(self.nodes.values()), self.suspects, self.now
        )
        self.view.release_due(self.now)
        decisions: list[Decision] = []
        while batch := self.view.placements(self.now, self.rng.randint(1, 4)):
            decisions.extend(batch)
        assert [(d.job.id, d.job.node) for d in decisions] == expected
        for decision in decisions:
            self.write_placement(decision)

    def write_placement(self, decision: Decision) -> None:
        if self.rng.random() < 0.1:
            # The write lost a race: the job changed (canceled, or rewritten) meanwhile.
            self.view.forget(decision.key)
            job = self.jobs[decision.key].clone()
            self.put_job(decision.key, transitions.cancel(job, self.now) or job)
            return
        self.put_job(decision.key, decision.job)
        self.sent[(decision.key, decision.job.attempt)] = self.now


@pytest.mark.parametrize("seed", range(40))
def test_incremental_decisions_match_a_pass_from_scratch(seed: int) -> None:
    world = World(random.Random(seed))
    for _ in range(300):
        world.step()
        world.check_pass()


def crowded_view(queued: int) -> tuple[LeaderView, list[Decision]]:
    """Two 1-CPU nodes, both busy, and `queued` 1-CPU jobs waiting behind them."""
    view = LeaderView(TIMEOUT, BACKOFF)
    for i, name in enumerate(["a", "b"]):
        view.set_node(f"nodes/{name}", record(name, 1.0, {"zone": "x"}, i + 1, 0.0))
    for n in range(queued + 2):
        job = pending(n, JobSpec(cmd="x"))
        view.set_job(f"jobs/{job.id}", job, n + 1, 0.0)
    placed = view.placements(0.0, 64)
    assert view.lost(0.0) == []  # the placements are checked once, as any change is
    return view, placed


def test_a_load_refresh_changes_nothing_placement_reads() -> None:
    view, _ = crowded_view(100)
    index_before = (dict(view.index.version), {k: len(h) for k, h in view.index.heaps.items()})
    blocked_before = set(view.queue.blocked)
    old = view.records["a"]
    view.set_node(
        "nodes/a",
        msgspec.structs.replace(
            old, load=(3.0, 2.0, 1.0), memory_available=1, used_cpus=1.0, running_jobs=1
        ),
    )
    after = (dict(view.index.version), {k: len(h) for k, h in view.index.heaps.items()})
    assert after == index_before
    assert view.queue.blocked == blocked_before and blocked_before
    assert not view.unchecked
    assert view.placements(0.0, 64) == []


def test_a_completion_looks_at_one_shape_not_every_queued_job() -> None:
    view, placed = crowded_view(10_000)
    assert [(d.job.id, d.job.node) for d in placed] == [(f"{0:020x}", "a"), (f"{1:020x}", "b")]
    for decision in placed:
        view.set_job(decision.key, decision.job, 20_000, 0.0)
    chosen = []
    choose = view.index.choose
    view.index.choose = lambda spec: chosen.append(spec) or choose(spec)  # type: ignore[method-assign]
    done = transitions.finish(
        transitions.start(placed[1].job.clone(), "b", 1, 1.0) or placed[1].job,
        "b",
        1,
        Outcome(1.0, 2.0, exit_code=0),
        Tail(),
        BACKOFF,
    )
    view.set_job(placed[1].key, done, 20_001, 2.0)
    again = view.placements(2.0, 64)
    assert [(d.job.id, d.job.node) for d in again] == [(f"{2:020x}", "b")]
    assert len(chosen) == 2  # the next job, then the shape's new head: blocked again


def test_lost_node_recovery_looks_only_at_that_nodes_jobs() -> None:
    view, placed = crowded_view(1000)
    view.set_node("nodes/a", None)
    assert view.unchecked == {placed[0].key}
    lost = view.lost(1.0)
    assert [(d.key, d.reason, d.job.state) for d in lost] == [
        (placed[0].key, "node lost", JobState.PENDING)
    ]


def placed_on(view: LeaderView, name: str, lease: int) -> Decision:
    """One job placed (ASSIGNED) on node `name`, whose record is under `lease`."""
    view.set_node(f"nodes/{name}", record(name, 1.0, {}, lease, 0.0))
    job = pending(7, JobSpec(cmd="x", retries=1))
    view.set_job(f"jobs/{job.id}", job, 1, 0.0)
    (placed,) = view.placements(0.0, 64)
    view.set_job(placed.key, placed.job, 2, 0.0)
    assert view.lost(0.0) == []
    return placed


def running_on(view: LeaderView, name: str, lease: int) -> str:
    """One job RUNNING on node `name` under `lease`; its key."""
    placed = placed_on(view, name, lease)
    started = transitions.start(placed.job.clone(), name, 1, 0.0, lease)
    assert started is not None
    view.set_job(placed.key, started, 3, 0.0)
    assert view.lost(0.0) == []
    return placed.key


def test_a_running_attempt_of_a_lost_node_is_closed_only_after_the_grace() -> None:
    view = LeaderView(TIMEOUT, BACKOFF, lost_grace=5.0)
    key = running_on(view, "a", 1)
    view.set_node("nodes/a", None)
    assert view.lost(10.0, clock=100.0) == []  # seen lost now: its agent is killing it
    assert view.next_timer() == 15.0  # the scheduler wakes for it
    assert view.lost(14.0, clock=104.9) == []
    (decision,) = view.lost(15.0, clock=105.0)
    assert (decision.key, decision.reason, decision.job.attempt) == (key, "node lost", 2)


def test_the_grace_counts_on_the_monotonic_clock_not_the_wall_clock() -> None:
    view = LeaderView(TIMEOUT, BACKOFF, lost_grace=5.0)
    running_on(view, "a", 1)
    view.set_node("nodes/a", None)
    assert view.lost(10.0, clock=100.0) == []
    assert view.lost(1000.0, clock=101.0) == []  # the wall clock jumped ahead: not yet


def test_a_node_back_before_the_grace_ends_closes_nothing_and_restarts_the_wait() -> None:
    view = LeaderView(TIMEOUT, BACKOFF, lost_grace=5.0)
    running_on(view, "a", 1)
    view.set_node("nodes/a", None)
    assert view.lost(10.0, clock=100.0) == []
    view.set_node("nodes/a", record("a", 1.0, {}, 1, 0.0))  # the same lease: alive
    assert view.lost(11.0, clock=101.0) == []
    assert view.lost_since == {}
    view.set_node("nodes/a", None)
    assert view.lost(12.0, clock=102.0) == []
    assert view.lost(16.0, clock=106.0) == []  # 4 s since it was lost again
    assert len(view.lost(17.0, clock=107.0)) == 1


def test_an_assigned_attempt_of_a_lost_node_goes_back_at_once() -> None:
    view = LeaderView(TIMEOUT, BACKOFF, lost_grace=5.0)
    placed = placed_on(view, "a", 1)
    view.set_node("nodes/a", None)
    lost = view.lost(1.0, clock=1.0)
    assert [(d.key, d.job.state) for d in lost] == [(placed.key, JobState.PENDING)]
