"""An in-memory cluster with the interface the web console's pages use (ctl/ui/console.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from schedagent.ctl.client import ApiError, Record
from schedagent.ctl.ui.console import Output


def job_record(job_id: str, state: str = "SUCCEEDED", cmd: str = "true", **more: Any) -> Record:
    spec = {"cmd": cmd, "cpus": 1.0, "retries": 0, **more.pop("spec", {})}
    return {
        "id": job_id,
        "state": state,
        "spec": spec,
        "node": more.pop("node", "node1"),
        "attempt": 1,
        "submitted_at": 1_700_000_000.0,
        **more,
    }


@dataclasses.dataclass
class FakeCluster:
    """Jobs newest first; records what was submitted, canceled and done to schedules."""

    jobs: list[Record] = dataclasses.field(default_factory=list)
    node_list: list[Record] = dataclasses.field(default_factory=list)
    leader_record: Record | None = None
    outputs: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    schedule_list: list[Record] = dataclasses.field(default_factory=list)
    recent_slots: list[Record] = dataclasses.field(default_factory=list)
    signed: bool = True
    failure: Exception | None = None
    submitted: list[Record] = dataclasses.field(default_factory=list)
    canceled: list[str] = dataclasses.field(default_factory=list)
    actions: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    list_calls: list[tuple[str | None, int, str | None]] = dataclasses.field(default_factory=list)
    # fleet_get's replies by group id; fleet_cancel records the id and marks it canceled.
    groups: dict[str, Record] = dataclasses.field(default_factory=dict)
    groups_canceled: list[str] = dataclasses.field(default_factory=list)
    # fleet_list's runs, newest first (each a summary as daemon/fleetlist.py makes it).
    runs: list[Record] = dataclasses.field(default_factory=list)
    fleet_list_calls: list[tuple[int, str | None]] = dataclasses.field(default_factory=list)

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def nodes(self) -> list[Record]:
        self._fail()
        return list(self.node_list)

    async def leader(self) -> Record | None:
        return self.leader_record

    async def list_jobs(self, state: str | None, limit: int, before: str | None) -> Record:
        """Like the agents' `list`: newest first after `before`; `next` null when full."""
        self._fail()
        self.list_calls.append((state, limit, before))
        ids = [j["id"] for j in self.jobs]
        start = ids.index(before) + 1 if before in ids else 0
        picked = [j for j in self.jobs[start:] if state is None or j["state"] == state]
        return {"jobs": picked[:limit], "next": None}

    async def get(self, job_id: str) -> Record:
        self._fail()
        for job in self.jobs:
            if job["id"] == job_id:
                return {"job": job, "pending_reason": None}
        raise ApiError(f"job {job_id} not found", "not_found")

    async def output(self, job_id: str, after: int) -> Output:
        chunks = self.outputs.get(job_id, [])
        return Output(chunks[after:], len(chunks))

    async def submit(self, spec: Record) -> Record:
        self._fail()
        self.submitted.append(spec)
        job = job_record(f"{len(self.submitted):020x}", "PENDING", spec["cmd"])
        self.jobs.insert(0, job)
        return job

    async def cancel(self, job_id: str) -> Record:
        self._fail()
        self.canceled.append(job_id)
        job: Record = (await self.get(job_id))["job"]
        return job

    async def schedules(self) -> list[Record]:
        return list(self.schedule_list)

    async def schedule(self, name: str) -> Record:
        for found in self.schedule_list:
            if found["definition"]["name"] == name:
                recent = self.recent_slots
                return {"schedule": found, "recent": recent, "next_slot": None, "last_slot": None}
        raise ApiError(f"schedule {name} not found", "not_found")

    async def schedule_action(self, action: str, name: str) -> Record:
        self.actions.append((action, name))
        return {}

    async def fleet_list(self, limit: int, before: str | None) -> Record:
        """Like the agents' fleet_list: newest first after `before`; `next` only if
        an older run exists."""
        self._fail()
        self.fleet_list_calls.append((limit, before))
        ids = [r["id"] for r in self.runs]
        start = ids.index(before) + 1 if before in ids else 0
        picked = self.runs[start : start + limit]
        more = start + limit < len(self.runs)
        return {"runs": picked, "next": picked[-1]["id"] if more and picked else None}

    async def fleet_get(self, group_id: str) -> Record:
        self._fail()
        if group_id not in self.groups:
            raise ApiError(f"no fleet run {group_id}", "not_found")
        return self.groups[group_id]

    async def fleet_cancel(self, group_id: str) -> Record:
        self._fail()
        reply = await self.fleet_get(group_id)
        self.groups_canceled.append(group_id)
        reply["group"]["canceled"] = True
        return {"group": reply["group"]}
