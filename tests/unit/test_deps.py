"""Job dependencies in the leader's view: held until every parent SUCCEEDED, ended unrun
when one did not, and the same decisions from a view rebuilt after a failover."""

from __future__ import annotations

import random

import pytest

from schedagent.core import transitions
from schedagent.core.deps import waits_for_parents
from schedagent.core.leaderview import LeaderView
from schedagent.core.model import Attempt, Job, JobSpec, JobState

BACKOFF = transitions.Backoff(1.0, 8.0)
ENDS = [JobState.SUCCEEDED] * 3 + [JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELED]


def job_id(n: int) -> str:
    return f"{n:020x}"


class Etcd:
    """Job records as etcd holds them: live ones under jobs/, final ones under done/.

    Views see it as the scheduler's mirror does: a record that becomes final leaves
    jobs/ (the view is told None), and a parent's end is read from done/.
    """

    def __init__(self) -> None:
        self.live: dict[str, Job] = {}  # key -> record
        self.done: dict[str, Job] = {}  # id -> record
        self.revision = 1
        self.views: list[LeaderView] = []

    def put(self, job: Job) -> None:
        self.revision += 1
        key = f"jobs/{job.id}"
        if job.state.final:
            self.live.pop(key, None)
            self.done[job.id] = job
        else:
            self.live[key] = job
        for view in self.views:
            self.tell(view, key)

    def delete_done(self, job_id: str) -> None:
        """Retention."""
        del self.done[job_id]

    def tell(self, view: LeaderView, key: str) -> None:
        view.set_job(key, self.live.get(key), self.revision, 0.0)

    def rebuilt_view(self, rng: random.Random) -> LeaderView:
        """A new leader's view: every live record read, in any order."""
        view = LeaderView(10.0, BACKOFF)
        keys = list(self.live)
        rng.shuffle(keys)
        for key in keys:
            self.tell(view, key)
        return view

    def answer_lookups(self, view: LeaderView) -> None:
        """What the scheduler does with view.parent_lookups(): read each from etcd."""
        for parent in view.parent_lookups():
            if f"jobs/{parent}" in self.live:
                continue  # live: the watch brings its end
            done = self.done.get(parent)
            view.parent_ended(parent, None if done is None else done.state, 0.0)


def child(n: int, *parents: int) -> Job:
    spec = JobSpec(cmd="x", after=tuple(job_id(p) for p in parents))
    return Job(id=job_id(n), spec=spec, state=JobState.PENDING, submitted_at=0.0)


def parent(n: int) -> Job:
    return Job(id=job_id(n), spec=JobSpec(cmd="x"), state=JobState.PENDING, submitted_at=0.0)


def ended(job: Job, state: JobState) -> Job:
    new = job.clone()
    new.state = state
    return new


def classify(view: LeaderView, etcd: Etcd) -> dict[str, str]:
    """Each live child: 'ready' (queued), 'waiting', or 'unrun' (to end, its reason
    naming a parent that did not succeed)."""
    etcd.answer_lookups(view)
    ends = {d.key: d.job.reason or "" for d in view.unrun_ends()}
    for key, reason in ends.items():
        assert reason in unrun_reasons(etcd, etcd.live[key]), (key, reason)
    found = {}
    for key, job in etcd.live.items():
        if not waits_for_parents(job):
            continue
        if key in ends:
            found[key] = "unrun"
        else:
            found[key] = "ready" if key in view.queue else "waiting"
    return found


def unrun_reasons(etcd: Etcd, job: Job) -> set[str]:
    """The reasons a child may end with: one per parent that did not succeed."""
    reasons = set()
    for p in job.spec.after:
        done = etcd.done.get(p)
        if done is None and f"jobs/{p}" not in etcd.live:
            reasons.add(f"parent {p} not found (deleted by retention?): not run")
        elif done is not None and done.state != JobState.SUCCEEDED:
            reasons.add(f"parent {p} ended {done.state}: not run")
    return reasons


def expected(etcd: Etcd) -> dict[str, str]:
    """What classify finds, from the records alone."""
    found = {}
    for key, job in etcd.live.items():
        if not waits_for_parents(job):
            continue
        if unrun_reasons(etcd, job):
            found[key] = "unrun"
        elif any(f"jobs/{p}" in etcd.live for p in job.spec.after):
            found[key] = "waiting"
        else:
            found[key] = "ready"
    return found


def setup() -> tuple[Etcd, LeaderView]:
    etcd = Etcd()
    view = LeaderView(10.0, BACKOFF)
    etcd.views.append(view)
    return etcd, view


def test_a_child_waits_for_both_parents_then_is_queued() -> None:
    etcd, view = setup()
    a, b = parent(1), parent(2)
    for job in (a, b, child(3, 1, 2)):
        etcd.put(job)
    assert classify(view, etcd) == {"jobs/" + job_id(3): "waiting"}
    assert "jobs/" + job_id(1) in view.queue and "jobs/" + job_id(3) not in view.queue
    etcd.put(ended(a, JobState.SUCCEEDED))
    assert classify(view, etcd) == {"jobs/" + job_id(3): "waiting"}
    etcd.put(ended(b, JobState.SUCCEEDED))
    assert classify(view, etcd) == {"jobs/" + job_id(3): "ready"}


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELED])
def test_a_parent_that_does_not_succeed_ends_the_child_unrun(state: JobState) -> None:
    etcd, view = setup()
    a, b = parent(1), parent(2)
    for job in (a, b, child(3, 1, 2)):
        etcd.put(job)
    etcd.put(ended(b, state))
    # Its end came as a delete from jobs/: the view asks for it before deciding.
    assert view.unrun_ends() == []
    assert view.deps.lookups == {job_id(2)}
    etcd.answer_lookups(view)
    (decision,) = view.unrun_ends()
    assert decision.key == "jobs/" + job_id(3)
    assert (decision.job.state, decision.job.reason) == (
        JobState.CANCELED,
        f"parent {job_id(2)} ended {state}: not run",
    )
    assert decision.job.attempts == []
    assert "jobs/" + job_id(3) not in view.queue
    etcd.put(decision.job)  # written: the child leaves the view and its index
    assert view.deps.waiting == {} and view.deps.children == {} and view.deps.doomed == {}


def test_a_parent_final_before_the_child_is_read_from_etcd() -> None:
    etcd, view = setup()
    etcd.put(ended(parent(1), JobState.SUCCEEDED))
    etcd.put(ended(parent(2), JobState.FAILED))
    etcd.put(child(3, 1))
    etcd.put(child(4, 1, 2))
    assert view.deps.lookups == {job_id(1), job_id(2)}
    etcd.answer_lookups(view)
    etcd.put(child(5, 1))  # after its parent's end was read: read again
    assert view.deps.lookups == {job_id(1)}
    assert classify(view, etcd) == {
        "jobs/" + job_id(3): "ready",
        "jobs/" + job_id(4): "unrun",
        "jobs/" + job_id(5): "ready",
    }


def test_a_parent_deleted_by_retention_ends_the_child_unrun() -> None:
    etcd, view = setup()
    etcd.put(ended(parent(1), JobState.SUCCEEDED))
    etcd.delete_done(job_id(1))
    etcd.put(child(2, 1))
    etcd.answer_lookups(view)
    (decision,) = view.unrun_ends()
    assert decision.job.reason == f"parent {job_id(1)} not found (deleted by retention?): not run"


def test_a_child_that_names_itself_ends_unrun() -> None:
    etcd, view = setup()
    etcd.put(child(1, 1))
    (decision,) = view.unrun_ends()
    assert (decision.job.state, decision.job.reason) == (
        JobState.CANCELED,
        "names itself as its parent: not run",
    )


def test_a_retry_of_a_child_does_not_wait_again() -> None:
    # Its first placement needed every parent SUCCEEDED, and a final state stays.
    etcd, view = setup()
    retried = child(2, 1)
    retried.attempt = 2
    retried.attempts = [Attempt(1, "n", 0.0, 0.0, 1.0, "FAILED")]
    etcd.put(retried)
    assert view.parent_lookups() == []
    assert "jobs/" + job_id(2) in view.queue


def test_a_canceled_child_leaves_the_index() -> None:
    etcd, view = setup()
    etcd.put(parent(1))
    kid = child(2, 1)
    etcd.put(kid)
    assert view.deps.children == {job_id(1): {"jobs/" + job_id(2)}}
    etcd.put(transitions.cancel(kid.clone(), 0.0) or kid)
    assert view.deps.children == {} and view.deps.waiting == {}


class CountingDict(dict[str, set[str]]):
    """The view's index of waiting children, counting the entries looked at."""

    reads = 0

    def __getitem__(self, key: str) -> set[str]:
        CountingDict.reads += 1
        return super().__getitem__(key)


def test_a_parents_end_looks_only_at_its_own_children() -> None:
    etcd, view = setup()
    etcd.views.clear()  # fed by hand below, and the lookups answered at once
    busy, lone = parent(1), parent(2)
    for job in (busy, lone):
        view.set_job(f"jobs/{job.id}", job, 1, 0.0)
    for n in range(100, 10_100):
        kid = child(n, 1)
        view.set_job(f"jobs/{kid.id}", kid, 1, 0.0)
    last = child(20_000, 2)
    view.set_job(f"jobs/{last.id}", last, 1, 0.0)
    view.deps.waiting = CountingDict(view.deps.waiting)
    CountingDict.reads = 0
    view.set_job(f"jobs/{lone.id}", ended(lone, JobState.SUCCEEDED), 2, 0.0)
    assert CountingDict.reads == 1
    assert f"jobs/{last.id}" in view.queue and len(view.queue) == 1 + 1  # and the busy parent


@pytest.mark.parametrize("seed", range(30))
def test_a_rebuilt_view_decides_as_the_one_that_followed_every_change(seed: int) -> None:
    rng = random.Random(seed)
    etcd, view = setup()
    next_n = 1
    for _ in range(200):
        action = rng.random()
        if action < 0.45 or not etcd.live:
            known = [int(j.id, 16) for j in [*etcd.live.values(), *etcd.done.values()]]
            parents = rng.sample(known, min(len(known), rng.randint(0, 3)))
            etcd.put(child(next_n, *parents))
            next_n += 1
        elif action < 0.85:
            # A job that may run (not held) ends, as its worker would end it.
            verdicts = expected(etcd)
            runnable = [k for k, j in etcd.live.items() if verdicts.get(k, "ready") == "ready"]
            if runnable:
                key = rng.choice(sorted(runnable))
                etcd.put(ended(etcd.live[key], rng.choice(ENDS)))
        elif action < 0.9 and etcd.done:
            # Retention, of a record no waiting child names (it runs days later).
            named = {p for j in etcd.live.values() if waits_for_parents(j) for p in j.spec.after}
            old = sorted(set(etcd.done) - named)
            if old:
                etcd.delete_done(rng.choice(old))
        else:  # a scheduler pass: the children to end are written
            etcd.answer_lookups(view)
            for decision in view.unrun_ends():
                etcd.put(decision.job)
        if rng.random() < 0.2:
            truth = expected(etcd)
            assert classify(view, etcd) == truth
            assert classify(etcd.rebuilt_view(rng), etcd) == truth
