"""Two leaders for a moment: two schedule loops fire the same slots on a real etcd.

Each slot must get one job (a fleet schedule's: one group), written once (its create
revision is its mod revision: no loop wrote over another's), and the state must record
each slot once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from schedagent.core.fleet import Group
from schedagent.core.model import Job, KnownHost
from schedagent.core.names import Keys
from schedagent.core.schedfleet import slot_group_id
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SigningKey
from schedagent.daemon.schedules import ScheduleLoop
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.schedstore import ScheduleStore
from schedagent.etcd.store import Put, Store

KEYS = Keys("/schedagent")


class QuietBus:
    """The loop's bus, with nobody listening: events are not what this test is about."""

    async def publish_event(self, job: Job) -> None:
        return None


async def test_two_loops_at_once_make_one_job_per_slot(etcd_server: Any) -> None:
    stores = [Store([etcd_server.url]) for _ in range(2)]
    for store in stores:
        await store.connect()
    try:
        key = SigningKey.generate()
        definition = parse_definition(
            {
                "name": "twice",
                "every": 1,
                "job": {"cmd": "true"},
                "catch_up": "all",
                "concurrency": "allow",
            }
        )
        signed_at = time.time() - 30  # thirty missed slots for both loops to catch up
        schedule = Schedule(definition, key.sign_schedule(definition.to_dict(), now=signed_at))
        assert await ScheduleStore(stores[0], KEYS).create(schedule)
        read_at = (await stores[0].get(KEYS.schedule("twice"))).mod_revision  # type: ignore[union-attr]
        loops = [ScheduleLoop(KEYS, JobStore(s, KEYS), QuietBus(), []) for s in stores]  # type: ignore[arg-type]
        for loop in loops:
            loop.led_since = time.time()
        await asyncio.gather(*(loop.advance(schedule, read_at) for loop in loops))
        jobs, _ = await stores[0].get_prefix(KEYS.jobs)
        slots = [int(kv.key[-20:][:12], 16) // 1000 for kv in jobs]
        assert len(slots) == len(set(slots)) >= 29
        overwritten = [kv.key for kv in jobs if kv.create_revision != kv.mod_revision]
        assert not overwritten, f"jobs written twice: {overwritten}"
        state, _ = await ScheduleStore(stores[0], KEYS).state("twice")
        assert state is not None
        recorded = [e["slot"] for e in state.recent]
        assert len(recorded) == len(set(recorded)), recorded
        assert sorted(recorded) == sorted(slots)[-len(recorded) :]
    finally:
        for store in stores:
            await store.close()


async def test_two_loops_at_once_make_one_group_per_slot_of_a_fleet_schedule(
    etcd_server: Any,
) -> None:
    stores = [Store([etcd_server.url]) for _ in range(2)]
    for store in stores:
        await store.connect()
    try:
        for host in ("a", "b"):  # known hosts, offline: the snapshot still names them
            record = KnownHost(name=host, labels={}).to_json()
            await stores[0].txn([], [Put(KEYS.host(host), record)])
        key = SigningKey.generate()
        definition = parse_definition(
            {
                "name": "fleet",
                "every": 1,
                "job": {"cmd": "true"},
                "catch_up": "all",
                "concurrency": "allow",
                "fleet": {"selector": {"all": True}, "policy": {}},
            }
        )
        signed_at = time.time() - 30
        schedule = Schedule(definition, key.sign_schedule(definition.to_dict(), now=signed_at))
        assert await ScheduleStore(stores[0], KEYS).create(schedule)
        read_at = (await stores[0].get(KEYS.schedule("fleet"))).mod_revision  # type: ignore[union-attr]
        loops = [ScheduleLoop(KEYS, JobStore(s, KEYS), QuietBus(), []) for s in stores]  # type: ignore[arg-type]
        for loop in loops:
            loop.led_since = time.time()
        await asyncio.gather(*(loop.advance(schedule, read_at) for loop in loops))
        groups = [Group.from_json(kv.value) for kv in (await stores[0].get_prefix(KEYS.groups))[0]]
        slots = [g.schedule["slot"] for g in groups if g.schedule is not None]
        assert len(slots) == len(groups) == len(set(slots)) >= 29
        assert all(g.id == slot_group_id("fleet", g.schedule["slot"]) for g in groups)  # type: ignore[index]
        assert all(g.hosts() == ["a", "b"] for g in groups)
        kvs, _ = await stores[0].get_prefix(KEYS.groups)
        assert all(kv.create_revision == kv.mod_revision for kv in kvs), "a group written twice"
        assert (await stores[0].get_prefix(KEYS.jobs))[0] == []  # parts are the fleet loop's
        state, _ = await ScheduleStore(stores[0], KEYS).state("fleet")
        assert state is not None
        recorded = [e["group"] for e in state.recent]
        assert len(recorded) == len(set(recorded)), recorded
    finally:
        for store in stores:
            await store.close()


async def test_replace_cancels_a_fleet_schedules_unfinished_group_and_forbid_skips(
    etcd_server: Any,
) -> None:
    """Two slots due at once: the first slot's group has targets without a part yet
    (no fleet loop runs here), so it still runs when the second slot fires."""
    store = Store([etcd_server.url])
    await store.connect()
    try:
        await store.txn([], [Put(KEYS.host("a"), KnownHost(name="a", labels={}).to_json())])
        key = SigningKey.generate()
        loop = ScheduleLoop(KEYS, JobStore(store, KEYS), QuietBus(), [])  # type: ignore[arg-type]
        loop.led_since = time.time()
        made = {}
        for policy in ("replace", "forbid"):
            definition = parse_definition(
                {
                    "name": policy,
                    "every": 1,
                    "job": {"cmd": "true"},
                    "catch_up": "all",
                    "concurrency": policy,
                    "fleet": {"selector": {"all": True}, "policy": {}},
                }
            )
            signature = key.sign_schedule(definition.to_dict(), now=time.time() - 2.5)
            schedule = Schedule(definition, signature)
            assert await ScheduleStore(store, KEYS).create(schedule)
            read_at = (await store.get(KEYS.schedule(policy))).mod_revision  # type: ignore[union-attr]
            await loop.advance(schedule, read_at)
            kvs, _ = await store.get_prefix(KEYS.groups)
            groups = [Group.from_json(kv.value) for kv in kvs]
            made[policy] = sorted(
                (g.schedule["slot"], g.canceled)
                for g in groups
                if g.schedule is not None and g.schedule["name"] == policy
            )
        replaced = made["replace"]
        assert len(replaced) >= 2 and not replaced[-1][1], replaced
        assert all(canceled for _, canceled in replaced[:-1]), replaced
        assert len(made["forbid"]) == 1 and not made["forbid"][0][1], made["forbid"]
        state, _ = await ScheduleStore(store, KEYS).state("forbid")
        assert state is not None
        assert any(str(e.get("skipped", "")).startswith("forbid") for e in state.recent)
    finally:
        await store.close()
