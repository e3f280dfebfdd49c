"""A planned restart: the worker leaves its attempts running in their units; the next takes them."""

from __future__ import annotations

from pathlib import Path

from fakeunits import FakeUnits
from schedagent.core.model import JobState
from schedagent.core.names import Keys
from schedagent.daemon.handover import HandedAttempt
from schedagent.daemon.starter import Started
from schedagent.dev.memstore import MemStore
from schedagent.host.containment import Limits
from schedagent.host.jobunit import JobUnit
from workerfakes import JOB, Msg, running_record, wait_for, worker


async def test_a_handed_over_job_ends_once_recorded_by_the_next_worker(tmp_path: Path) -> None:
    store, units = MemStore(), FakeUnits()
    go, marks = tmp_path / "go", tmp_path / "marks"
    cmd = (
        f"echo start >> {marks}; echo before; while [ ! -e {go} ]; do sleep 0.02; done;"
        f" echo after; echo end >> {marks}"
    )
    record = running_record(cmd)
    revision = store.put(Keys("t").job(JOB), record.to_json())
    first = worker(store, units, tmp_path / "out")
    await first._launch(Msg(), Started(record, revision, None), 0.0)
    await wait_for("output", lambda: (tmp_path / "out" / f"{JOB}-1.out").exists())
    await wait_for(
        "the first line", lambda: b"before" in (tmp_path / "out" / f"{JOB}-1.out").read_bytes()
    )

    handed = await first.hand_over()
    offsets = (handed[0].stdout_offset, handed[0].stderr_offset)
    assert handed == [HandedAttempt(JOB, 1, f"schedjob-{JOB}-1.service", *offsets)]
    assert first.running == {} and first.finished == first.handed_back == 0
    stored, _ = await first.jobs.get(JOB)
    assert stored.state is JobState.RUNNING  # no end written: it runs on

    second = worker(store, units, tmp_path / "out")
    assert await second.reattach(handed) == 1
    go.touch()
    await wait_for("its end", lambda: not second.running)
    stored, _ = await second.jobs.get(JOB)
    assert stored.state is JobState.SUCCEEDED and len(stored.attempts) == 1, stored
    assert "before\nafter\n" in str(stored.output_tail)  # the first's output, then the second's
    assert marks.read_text() == "start\nend\n"  # the job itself ran once, to its end


async def test_a_handed_attempt_no_longer_this_nodes_is_stopped(tmp_path: Path) -> None:
    store, units = MemStore(), FakeUnits()
    record = running_record("sleep 1000", lease=0x0A)  # started under a lease since lost
    store.put(Keys("t").job(JOB), record.to_json())
    w = worker(store, units, tmp_path / "out")
    # The unit as the previous agent left it.
    unit = await w.containment.group(f"job-{JOB}-1", Limits())
    assert isinstance(unit, JobUnit)
    await unit.start("sleep 1000", {}, "/", None)
    assert await units.is_loaded(unit.service)
    assert await w.reattach([HandedAttempt(JOB, 1, unit.service, 0, 0)]) == 0
    assert not await units.is_loaded(unit.service)
    assert w.running == {}
