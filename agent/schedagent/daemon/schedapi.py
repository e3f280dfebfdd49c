"""The schedule verbs of the API: create, list, get, pause, resume, delete, run.

Create checks the schedule's signature; pause, resume, delete and run each need the
operator's signature over the action and that version of the schedule. Every decision
is audited, as submits and cancels are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from schedagent.config import AgentConfig
from schedagent.core import schedafter, schedplan
from schedagent.core.schedule import NAME_RE, Schedule
from schedagent.daemon.gate import Gate, Refused, audit_schedule
from schedagent.errors import NotFoundError, SpecError
from schedagent.etcd.groupstore import GroupStore
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.schedstore import ScheduleStore
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

LAST_GROUPS = 10  # a fleet schedule's latest slots' groups, named by `schedule show`
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ScheduleApi:
    def __init__(self, config: AgentConfig, gate: Gate, jobs: JobStore, bus: Bus) -> None:
        self.config = config
        self.gate = gate
        self.jobs = jobs
        self.bus = bus
        self.schedules = ScheduleStore(jobs.store, jobs.keys)
        self.groups = GroupStore(jobs.store, jobs.keys)

    def handlers(self) -> dict[str, Handler]:
        return {
            "schedule_create": self.create,
            "schedule_list": self.list_schedules,
            "schedule_get": self.get,
            "schedule_pause": lambda req: self.set_paused(req, True),
            "schedule_resume": lambda req: self.set_paused(req, False),
            "schedule_delete": self.delete,
            "schedule_run": self.run_now,
        }

    async def create(self, req: dict[str, Any]) -> dict[str, Any]:
        raw = req.get("schedule")
        if not isinstance(raw, dict):
            raise SpecError("schedule must be an object with definition and signature")
        schedule = Schedule.from_dict(
            {"definition": raw.get("definition"), "signature": raw.get("signature")},
            self.config.jobs.max_cmd_bytes,
        )
        if (
            len(json.dumps(dict(schedule.definition.job["env"])))
            > self.config.security.max_env_bytes
        ):
            raise SpecError(f"env larger than {self.config.security.max_env_bytes} bytes")
        try:
            signer = self.gate.check_schedule(schedule)
        except Refused as exc:
            audit_schedule(
                "schedule-create",
                schedule.name,
                schedule.signature.key_id,
                str(exc),
                logging.WARNING,
            )
            raise SpecError(str(exc)) from None
        await self._check_parents(schedule)
        if not await self.schedules.create(schedule):
            raise SpecError(f"schedule {schedule.name} exists (delete it first)")
        audit_schedule("schedule-create", schedule.name, signer, "created")
        log.info("schedule %s created: %s", schedule.name, schedule.definition.job["cmd"][:200])
        return {"schedule": _public(schedule)}

    async def _check_parents(self, schedule: Schedule) -> None:
        """SpecError unless every parent exists, has every slot this one has, and none
        waits (through others) for this one."""
        after = schedule.definition.after
        if not after:
            return
        existing = {s.name: s for s in await self.schedules.all()}
        for name in after:
            parent = existing.get(name)
            if parent is None:
                raise SpecError(f"after: no schedule {name} (create it first)")
            if parent.definition.fleet is not None:
                raise SpecError(f"after {name}: a fleet schedule cannot be waited for")
            why = schedafter.incompatible(schedule.definition, parent.definition)
            if why is not None:
                raise SpecError(f"after {name}: {why}")
        graph = {name: s.definition.after for name, s in existing.items()}
        _, cyclic = schedafter.parents_first({**graph, schedule.name: after})
        if schedule.name in cyclic:
            raise SpecError(f"{cyclic[schedule.name]}: refused")

    async def list_schedules(self, req: dict[str, Any]) -> dict[str, Any]:
        found = sorted(await self.schedules.all(), key=lambda s: s.name)
        return {"schedules": [_public(s) for s in found]}

    async def get(self, req: dict[str, Any]) -> dict[str, Any]:
        schedule, _ = await self.schedules.get(_name(req))
        stored, _ = await self.schedules.state(schedule.name)
        state = schedplan.state_for(schedule, stored)
        recent = await self._with_group_states(await self._with_job_states(list(state.recent)))
        groups = [e["group"] for e in recent if "group" in e]
        return {
            "schedule": _public(schedule),
            "last_groups": groups[-LAST_GROUPS:],
            "last_slot": None if state.last_slot == schedule.starts_at else state.last_slot,
            "next_slot": schedule.definition.slots().next_after(state.last_slot),
            "recent": recent,
        }

    async def _with_job_states(self, recent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each fired slot's entry with its job's state ("gone": retention deleted it)."""
        ids = [e["job"] for e in recent if isinstance(e.get("job"), str)]
        states: dict[str, str] = {}
        for first in range(0, len(ids), 64):
            for job_id in ids[first : first + 64]:
                try:
                    job, _ = await self.jobs.get(job_id)
                    states[job_id] = str(job.state)
                except NotFoundError:
                    states[job_id] = "gone"
        return [{**e, "state": states[e["job"]]} if "job" in e else e for e in recent]

    async def _with_group_states(self, recent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each fleet slot's entry with its group's state (running, canceled, done and
        its counts; "gone" if its record was deleted)."""
        found = []
        for entry in recent:
            if isinstance(entry.get("group"), str):
                entry = {**entry, **await self._group_state(entry["group"])}
            found.append(entry)
        return found

    async def _group_state(self, group_id: str) -> dict[str, Any]:
        try:
            group, _ = await self.groups.get(group_id)
        except NotFoundError:
            return {"state": "gone"}
        if group.done:
            return {"state": "done", "counts": dict(group.counts)}
        return {"state": "canceled" if group.canceled else "running"}

    async def set_paused(self, req: dict[str, Any], paused: bool) -> dict[str, Any]:
        action = "pause" if paused else "resume"
        schedule, revision = await self.schedules.get(_name(req))
        signer, signature = self._check_action(action, schedule, req.get("signature"))
        if signature.signed_at <= schedule.changed_at:
            audit_schedule(
                f"schedule-{action}", schedule.name, signer, "refused: stale", logging.WARNING
            )
            raise SpecError("signature rejected: signed before the last pause or resume")
        updated = dataclasses.replace(
            schedule,
            paused=paused,
            changed_at=signature.signed_at,
            resumed_at=schedule.resumed_at if paused else time.time(),
        )
        if not await self.schedules.replace(updated, revision):
            raise SpecError(f"schedule {schedule.name} changed meanwhile; try again")
        audit_schedule(
            f"schedule-{action}", schedule.name, signer, "paused" if paused else "resumed"
        )
        return {"schedule": _public(updated)}

    async def delete(self, req: dict[str, Any]) -> dict[str, Any]:
        schedule, revision = await self.schedules.get(_name(req))
        signer, _ = self._check_action("delete", schedule, req.get("signature"))
        if not await self.schedules.delete(schedule.name, revision):
            raise SpecError(f"schedule {schedule.name} changed meanwhile; try again")
        audit_schedule("schedule-delete", schedule.name, signer, "deleted")
        return {"schedule": _public(schedule)}

    async def run_now(self, req: dict[str, Any]) -> dict[str, Any]:
        """One run outside the schedule: a job like a slot's, carrying the signed request."""
        schedule, _ = await self.schedules.get(_name(req))
        if schedule.definition.fleet is not None:
            raise SpecError(
                f"schedule {schedule.name} is a fleet schedule: a run outside its slots is "
                "not built; use schedctl run with its selector"
            )
        signer, signature = self._check_action("run", schedule, req.get("signature"))
        spec = msgspec.structs.replace(
            schedule.slot_spec(None, signature), idempotency_key=f"schedule-run:{signature.nonce}"
        )
        job, created = await self.jobs.create(spec)
        if created:
            await self.bus.publish_event(job)
        audit_schedule("schedule-run", schedule.name, signer, f"job {job.id}")
        return {"job": job.to_dict(), "created": created}

    def _check_action(self, action: str, schedule: Schedule, raw: object) -> Any:
        try:
            return self.gate.check_schedule_action(action, schedule, raw, time.time())
        except Refused as exc:
            key = raw.get("key_id") if isinstance(raw, dict) else None
            audit_schedule(
                f"schedule-{action}",
                schedule.name,
                str(key)[:64] if key else None,
                str(exc),
                logging.WARNING,
            )
            raise SpecError(str(exc)) from None


def _name(req: dict[str, Any]) -> str:
    name = req.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(f"name must be a schedule name, got {name!r}")
    return name


def _public(schedule: Schedule) -> dict[str, Any]:
    """The record as replies show it: the definition flat, its signer's key id."""
    record = schedule.to_dict()
    record.pop("v")
    record["key_id"] = schedule.signature.key_id
    record["starts_at"] = schedule.starts_at
    return record
