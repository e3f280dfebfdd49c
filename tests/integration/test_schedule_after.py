"""Schedules after schedules on real servers: slot T of a child runs after its parent's slot T.

The loop test drives the leader's schedule loop on a real etcd and reads the jobs it
wrote; the cluster test judges from the marks the runs write (the slot is in the job id)
and from a file the parent's failing runs write, never from the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apiclient import ApiClient
from forge import dispatch_assigned
from schedagent.core.model import Job
from schedagent.core.names import Keys
from schedagent.core.schedplan import MISSED_NONE
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SigningKey
from schedagent.core.slots import slot_job_id
from schedagent.daemon.schedules import ScheduleLoop
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.schedstore import ScheduleStore
from schedagent.etcd.store import KV, Store
from schedhelp import action, create, quiesce, slot_of, slot_starts, wait_for_slots

KEYS = Keys("/schedagent")
FAST = {"node_ttl": 3, "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0}}


class QuietBus:
    """The loop's bus, with nobody listening: events are not what this test is about."""

    async def publish_event(self, job: Job) -> None:
        return None


async def test_the_leader_fires_a_childs_slot_after_its_parent_or_skips_it_saying_why(
    etcd_server: Any,
) -> None:
    store = Store([etcd_server.url])
    await store.connect()
    try:
        key, signed_at = SigningKey.generate(), time.time() - 8  # eight missed slots
        schedules = ScheduleStore(store, KEYS)

        async def make(name: str, **fields: Any) -> None:
            raw = {"name": name, "every": 1, "job": {"cmd": "true"}, "concurrency": "allow"}
            definition = parse_definition({**raw, "catch_up": "all", **fields})
            signature = key.sign_schedule(definition.to_dict(), now=signed_at)
            assert await schedules.create(Schedule(definition, signature))

        # Children sort before their parents: the key order alone would take them first.
        await make("zparent")
        await make("achild", after=["zparent"])
        await make("zskipper", catch_up="none")
        await make("bchild", after=["zskipper"])
        await make("zgone")
        await make("cchild", after=["zgone"])
        await schedules.delete("zgone", (await schedules.get("zgone"))[1])
        # A cycle the API refuses, made directly (as deleting and creating again could).
        await make("xcycle", after=["ycycle"])
        await make("ycycle", after=["xcycle"])
        loop = ScheduleLoop(KEYS, JobStore(store, KEYS), QuietBus(), [])  # type: ignore[arg-type]
        # Every slot this pass sees came before this leader, so all are missed ones:
        # with led_since = now, a second that ends mid-pass brings a slot due under
        # this leader, and catch_up none rightly fires it (a CI run did).
        loop.led_since = time.time() + 600
        view = asyncio.create_task(loop.view.run())
        await loop.view.synced.wait()
        await loop.run_pass()
        view.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await view
        jobs, _ = await store.get_prefix(KEYS.jobs)
        by_schedule = _runs_by_schedule(jobs)
        parent = by_schedule.get("zparent", {})
        assert len(parent) >= 7, by_schedule
        child = by_schedule.get("achild", {})
        assert set(child) == set(parent), (sorted(child), sorted(parent))
        for slot, run in child.items():
            assert Job.from_json(run.value).spec.after == (slot_job_id("zparent", slot),)
            assert run.create_revision > parent[slot].create_revision
        assert set(by_schedule) == {"zparent", "achild"}, sorted(by_schedule)
        skips = {name: await _skipped(schedules, name) for name in ("bchild", "cchild", "xcycle")}
        assert skips["bchild"] == [f"after zskipper: its slot was skipped: {MISSED_NONE}"]
        assert skips["cchild"] == ["after zgone: no such schedule (deleted?)"]
        assert len(skips["xcycle"]) == 1 and "wait for each other" in skips["xcycle"][0]
    finally:
        await store.close()


def _runs_by_schedule(jobs: list[KV]) -> dict[str, dict[int, KV]]:
    names = ("zparent", "achild", "zskipper", "bchild", "cchild", "xcycle", "ycycle")
    found: dict[str, dict[int, KV]] = {}
    for kv in jobs:
        job_id = kv.key[-20:]
        owner = [n for n in names if slot_job_id(n, slot_of(job_id)) == job_id]
        found.setdefault(owner[0] if owner else "?", {})[slot_of(job_id)] = kv
    return found


async def _skipped(schedules: ScheduleStore, name: str) -> list[str]:
    state, _ = await schedules.state(name)
    assert state is not None, name
    assert not [e for e in state.recent if "job" in e], state.recent
    return [str(e["skipped"]) for e in state.recent]


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def wait_for_lines(path: Path, count: int, deadline: float) -> None:
    end = time.monotonic() + deadline
    while len(lines(path)) < count:
        if time.monotonic() > end:
            raise AssertionError(f"{path}: fewer than {count} lines in {deadline}s")
        await asyncio.sleep(0.1)


async def wait_for_skip(api: ApiClient, name: str, reason: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not any(
        e.get("skipped") == reason for e in (await api.call("schedule_get", name=name))["recent"]
    ):
        if time.monotonic() > end:
            raise AssertionError(f"{name}: no slot skipped for {reason!r} in {deadline}s")
        await asyncio.sleep(0.2)


async def test_a_child_schedule_runs_after_its_parents_run_of_each_slot(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    parent_marks, child_marks = tmp_path / "extract", tmp_path / "report"
    flag, failed = tmp_path / "fail", tmp_path / "failed"
    # The parent's run fails while the test's flag file exists, and says so in `failed`.
    fail_if_flagged = (
        f"sleep 0.3; if [ -e {flag} ]; then echo $SCHED_JOB_ID >> {failed}; exit 1; fi"
    )
    async with ApiClient(cluster.nats_url) as api:
        await create(api, "extract", marks.marked(fail_if_flagged, parent_marks), every=2)
        for fields, why in (
            ({"after": ["nothing"]}, "after: no schedule nothing"),
            ({"after": ["extract"], "every": 3}, "not a multiple of its every 2s"),
            ({"after": ["extract"], "every": None, "cron": "* * * * *"}, "same kind of slots"),
        ):
            with pytest.raises(AssertionError, match=why):
                await create(api, "refused", "true", **{"every": 2, **fields})
        child_cmd = marks.marked("true", child_marks)
        await create(api, "report", child_cmd, every=2, after=["extract"])
        await wait_for_slots(child_marks, "report", 3, 40)
        flag.touch()
        await wait_for_lines(failed, 2, 30)
        flag.unlink()
        ran_before = len(slot_starts(child_marks, "report"))
        await wait_for_slots(child_marks, "report", ran_before + 2, 40)
        await action(api, "pause", "extract")
        await wait_for_skip(api, "report", "after extract: its slot was skipped: paused", 30)
        await quiesce(api, ["report", "extract"])
    parent_ends = {
        slot_of(m.job): m.at
        for m in marks.read_file(parent_marks)
        if m.kind == "end" and slot_job_id("extract", slot_of(m.job)) == m.job
    }
    failed_slots = {slot_of(job) for job in lines(failed)}
    child_starts = slot_starts(child_marks, "report")
    assert -1 not in child_starts and all(len(s) == 1 for s in child_starts.values())
    for slot, (start,) in child_starts.items():
        assert slot in parent_ends, f"report ran slot {slot}, extract did not"
        assert start.at > parent_ends[slot], f"slot {slot}: report started before extract ended"
    assert failed_slots, "no run of extract failed"
    assert not failed_slots & set(child_starts), "report ran a slot whose extract failed"
    assert max(child_starts) > max(failed_slots), "report did not run again after the failures"


async def test_a_forged_run_with_a_parent_dropped_is_refused_by_the_agent(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    ran = tmp_path / "ran"
    store = Store([cluster.etcd_endpoint])
    await store.connect()
    try:
        async with ApiClient(cluster.nats_url) as api:
            await create(api, "parent", "true", every=60)
            await action(api, "pause", "parent")
            cmd = f"echo $SCHED_JOB_ID >> {ran}"
            child = Schedule.from_dict(await create(api, "child", cmd, every=60, after=["parent"]))
            await action(api, "pause", "child")
            slot = child.definition.slots().next_after(int(time.time()) + 120)
            # Injected as a compromised leader would: the genuine run (its after as signed;
            # the leader's hold is bypassed, so it runs), and the next slot's with after
            # dropped, which would run at once without waiting for the parent.
            genuine = await dispatch_assigned(
                store, api, child.slot_job_id(slot), child.slot_spec(slot)
            )
            forged_spec = msgspec.structs.replace(child.slot_spec(slot + 60), after=())
            forged = await dispatch_assigned(store, api, child.slot_job_id(slot + 60), forged_spec)
            ok = await api.wait_for(genuine, deadline=20)
            refused = await api.wait_for(forged, deadline=20)
    finally:
        await store.close()
    assert ok["state"] == "SUCCEEDED", ok
    assert refused["state"] == "FAILED", refused
    assert "the run's after is not the runs of slot" in refused["reason"], refused["reason"]
    assert refused["attempts"][0]["started_at"] is None
    assert ran.read_text().split() == [genuine], "only the genuine run ran"
