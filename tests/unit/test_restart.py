"""The handover at a planned restart, end to end over an in-memory etcd and systemd."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakeunits import FakeUnits
from schedagent.core import fencing
from schedagent.core.model import JobState
from schedagent.core.names import Keys
from schedagent.daemon import handover
from schedagent.daemon.restart import Succession
from schedagent.daemon.starter import Started
from schedagent.dev.memstore import MemStore
from schedagent.etcd.session import Session
from schedagent.host import guard
from schedagent.host.jobslice import JOBS_SLICE
from workerfakes import JOB, Msg, running_record, wait_for, worker

TTL = 10


class LeasedMemStore(MemStore):
    """MemStore with leases that can be refreshed, and revoked (then they are gone)."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: set[int] = set()

    async def refresh_lease(self, lease: int) -> int:
        return 0 if lease in self.revoked or lease > self.leases else TTL

    async def revoke_lease(self, lease: int) -> None:
        self.revoked.add(lease)


def restarting_unit(units: FakeUnits) -> None:
    units.job_type = "restart"  # what systemd is doing to the agent's unit


async def test_a_restart_hands_the_job_and_the_lease_to_the_next_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, units, keys = LeasedMemStore(), FakeUnits(), Keys("t")
    path, go = tmp_path / "run" / "handover.json", tmp_path / "go"
    session = Session(store, TTL)
    old = Succession(path)
    await old.start_session(session)  # nothing handed to it: a new lease
    store.put(keys.candidate(session.lease_id), b"n1")
    record = running_record(f"echo before; while [ ! -e {go} ]; do sleep 0.02; done; echo after")
    record.attempts[0].lease = session.lease_id
    revision = store.put(keys.job(JOB), record.to_json())
    first = worker(store, units, tmp_path / "out", lambda: session.lease_id)
    first.containment.agent_unit = "schedagent.service"
    await first._launch(Msg(), Started(record, revision, None), 0.0)
    await wait_for("its start", lambda: first.running[JOB].group is not None)

    monkeypatch.setenv("INVOCATION_ID", "old-invocation")
    assert not await old.restarting(first.containment)  # no job on the unit: a stop
    restarting_unit(units)
    assert await old.restarting(first.containment)
    await old.hand_over(first, session, store, keys, first.containment)
    left = handover.read(path)
    assert left is not None and old.handed_over
    assert (left.invocation_id, left.lease_id, left.ttl) == (
        "old-invocation",
        session.lease_id,
        TTL,
    )
    assert [(a.job_id, a.attempt) for a in left.attempts] == [(JOB, 1)]
    assert await store.get(keys.candidate(session.lease_id)) is None  # resigned
    assert ("start", guard.TIMER) in units.calls
    assert (await first.jobs.get(JOB))[0].state is JobState.RUNNING

    monkeypatch.setenv("INVOCATION_ID", "new-invocation")
    new, next_session = Succession(path), Session(store, TTL)
    new.read()
    assert not path.exists()  # taken once
    await new.start_session(next_session)
    assert new.resumed and next_session.lease_id == session.lease_id
    second = worker(store, units, tmp_path / "out", lambda: next_session.lease_id)
    await new.take_over(second, second.containment)
    assert ("stop", guard.TIMER) in units.calls and ("stop", JOBS_SLICE) not in units.calls
    assert list(second.running) == [JOB]
    go.touch()
    await wait_for("its end", lambda: not second.running)
    job, _ = await second.jobs.get(JOB)
    assert (job.state, len(job.attempts)) == (JobState.SUCCEEDED, 1)


async def test_a_handover_too_late_for_its_guard_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, units = LeasedMemStore(), FakeUnits()
    path = tmp_path / "handover.json"
    lease = await store.grant_lease(TTL)
    session = Session(store, TTL)
    # Refreshed a whole TTL ago: its guard is due (or past), its jobs being stopped.
    stale = handover.Handover("old", lease, TTL, session.clock() - TTL, ())
    handover.write(path, stale)
    monkeypatch.setenv("INVOCATION_ID", "new")
    succession = Succession(path)
    succession.read()
    await succession.start_session(session)
    assert not succession.resumed and session.lease_id != lease
    w = worker(store, units, tmp_path / "out", lambda: session.lease_id)
    await succession.take_over(w, w.containment)
    assert ("stop", JOBS_SLICE) in units.calls  # whatever was left is stopped
    assert ("reset", "schedjob-*.service schedagent-jobs-*") in units.calls  # and unloaded


async def test_without_systemd_nothing_is_read_or_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "handover.json"
    handover.write(path, handover.Handover("x", 1, TTL, 0.0, ()))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    succession = Succession(path)
    succession.read()
    assert succession.received is None and path.exists()  # not this agent's to take
    w = worker(LeasedMemStore(), FakeUnits(), tmp_path / "out")
    assert not await succession.restarting(w.containment)


async def test_handed_attempts_it_cannot_take_are_left_to_the_guard_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No systemd units in the new agent: it must not register (and so have the jobs
    retried) before the guard has stopped them."""
    path = tmp_path / "handover.json"
    session = Session(LeasedMemStore(), TTL)
    due = 0.3  # the guard's stop comes this long from now
    refreshed = session.clock() - (fencing.deadline_after(TTL) - fencing.FENCE_KILL_GRACE
                                   - fencing.KILL_LATENCY - due)  # fmt: skip
    attempt = handover.HandedAttempt(JOB, 1, f"schedjob-{JOB}-1.service", 0, 0)
    handover.write(path, handover.Handover("old", 1, TTL, refreshed, (attempt,)))
    monkeypatch.setenv("INVOCATION_ID", "new")
    succession = Succession(path)
    succession.read()
    w = worker(LeasedMemStore(), FakeUnits(), tmp_path / "out")
    w.containment.units = None  # the bus is away
    began = session.clock()
    await succession.take_over(w, w.containment)
    waited = session.clock() - began
    assert waited >= due + fencing.FENCE_KILL_GRACE + fencing.KILL_LATENCY - 0.05, waited
    assert w.running == {}
