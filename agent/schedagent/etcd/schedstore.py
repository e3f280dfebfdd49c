"""Schedules in etcd: the signed records under schedules/, the leader's state under schedstate/.

Every write is a compare-and-swap. A slot's job is created in the same transaction as
the state that records it, compared absent under jobs/ and done/: so a slot, whoever
fires it and however often the write is retried, has one job.
"""

from __future__ import annotations

from collections.abc import Sequence

from schedagent.core.fleet import Group
from schedagent.core.model import Job
from schedagent.core.names import Keys
from schedagent.core.schedplan import ScheduleState
from schedagent.core.schedule import Schedule
from schedagent.errors import NotFoundError
from schedagent.etcd import malformed
from schedagent.etcd.store import KV, Absent, Compare, Delete, ModRevisionIs, Op, Put, Store


def decode_schedule(kv: KV) -> Schedule | None:
    """The schedule in a KV, or None (logged once) if it is not a schedule record."""
    return malformed.decode("schedule", kv.key, kv.value, Schedule.from_json)


def decode_state(kv: KV) -> ScheduleState | None:
    return malformed.decode("schedule state", kv.key, kv.value, ScheduleState.from_json)


def _revision_is(key: str, revision: int) -> Compare:
    return Absent(key) if revision == 0 else ModRevisionIs(key, revision)


class ScheduleStore:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys

    async def create(self, schedule: Schedule) -> bool:
        """Whether the schedule was created (False: one of that name exists)."""
        key = self.keys.schedule(schedule.name)
        return await self.store.txn([Absent(key)], [Put(key, schedule.to_json())])

    async def get(self, name: str) -> tuple[Schedule, int]:
        """The schedule and the revision it was read at; NotFoundError if there is none."""
        kv = await self.store.get(self.keys.schedule(name))
        schedule = None if kv is None else decode_schedule(kv)
        if kv is None or schedule is None:
            raise NotFoundError(f"no schedule {name}")
        return schedule, kv.mod_revision

    async def all(self) -> list[Schedule]:
        found: list[Schedule] = []
        async for page in self.store.scan(self.keys.schedules):
            found.extend(s for s in map(decode_schedule, page.kvs) if s is not None)
        return found

    async def replace(self, schedule: Schedule, revision: int) -> bool:
        key = self.keys.schedule(schedule.name)
        return await self.store.txn([ModRevisionIs(key, revision)], [Put(key, schedule.to_json())])

    async def delete(self, name: str, revision: int) -> bool:
        """Delete the schedule read at revision, and its state."""
        key = self.keys.schedule(name)
        ops: list[Op] = [Delete(key), Delete(self.keys.schedule_state(name))]
        return await self.store.txn([ModRevisionIs(key, revision)], ops)

    async def state(self, name: str) -> tuple[ScheduleState | None, int]:
        """The stored state and its revision (0 if there is none, or it is malformed)."""
        kv = await self.store.get(self.keys.schedule_state(name))
        state = None if kv is None else decode_state(kv)
        return state, 0 if kv is None else kv.mod_revision

    async def step(
        self,
        schedule_revision: tuple[str, int],
        state: tuple[ScheduleState, int],
        made: Job | Group | None,
        fence: Sequence[Compare],
    ) -> bool:
        """Write a step: the new state, and the slot's job (or a fleet schedule's group)
        if it fires, all or nothing.

        Compared: the fence, the schedule as read (a pause or delete meanwhile makes the
        step be decided again), the state as read (another leader's step), and the job
        absent as live work and as history, or the group absent (a slot fired already).
        """
        (name, read_at), (new, state_revision) = schedule_revision, state
        state_key = self.keys.schedule_state(name)
        compares = [
            *fence,
            ModRevisionIs(self.keys.schedule(name), read_at),
            _revision_is(state_key, state_revision),
        ]
        ops: list[Op] = [Put(state_key, new.to_json())]
        if isinstance(made, Job):
            compares += [Absent(self.keys.job(made.id)), Absent(self.keys.done_job(made.id))]
            ops.append(Put(self.keys.job(made.id), made.to_json()))
        elif made is not None:
            compares.append(Absent(self.keys.group(made.id)))
            ops.append(Put(self.keys.group(made.id), made.to_json()))
        return await self.store.txn(compares, ops)

    async def live(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs are live (not final yet)."""
        kvs = await self.store.get_many([self.keys.job(j) for j in job_ids])
        return {j for j, kv in zip(job_ids, kvs, strict=True) if kv is not None}
