"""The fleet-run verbs of the API: create (accept a signed group), get, cancel.

Create checks the group's signature, takes the target snapshot (the known hosts the
selector matches, online or not) and writes the record; the leader's fleet loop rolls
it out (daemon/fleet.py). Every decision is audited.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from schedagent.config import AgentConfig
from schedagent.core import rollout
from schedagent.core.fleet import GROUP_ID_RE, Group, parse_definition, snapshot
from schedagent.core.model import Job
from schedagent.core.signing import Signature, SignatureRejected
from schedagent.daemon.gate import Gate, Refused, audit_group
from schedagent.errors import FleetError, SpecError
from schedagent.etcd.groupstore import GroupStore
from schedagent.etcd.jobstore import JobStore

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
LAST_LINE_CHARS = 120


class FleetApi:
    def __init__(self, config: AgentConfig, gate: Gate, jobs: JobStore) -> None:
        self.config = config
        self.gate = gate
        self.groups = GroupStore(jobs.store, jobs.keys)

    def handlers(self) -> dict[str, Handler]:
        return {"fleet_create": self.create, "fleet_get": self.get, "fleet_cancel": self.cancel}

    async def create(self, req: dict[str, Any]) -> dict[str, Any]:
        raw = req.get("group")
        if not isinstance(raw, dict):
            raise SpecError("group must be an object with definition and signature")
        definition = parse_definition(raw.get("definition"), self.config.jobs.max_cmd_bytes)
        if len(json.dumps(dict(definition.job["env"]))) > self.config.security.max_env_bytes:
            raise SpecError(f"env larger than {self.config.security.max_env_bytes} bytes")
        try:
            signature = Signature.from_dict(raw.get("signature"))
        except SignatureRejected as exc:
            raise SpecError(f"signature rejected: {exc}") from None
        signer = self._check(Group(definition, signature, time.time(), ()))
        known, online = await self.groups.hosts()
        targets = snapshot(definition.selector, known, online)
        group = Group(definition, signature, time.time(), tuple(targets))
        if not targets:
            raise FleetError("no known host matches the selector")
        if not await self.groups.create(group):
            raise FleetError(f"fleet run {group.id} exists")
        offline = sum(not t.online for t in targets)
        audit_group("fleet-create", group.id, signer, f"{len(targets)} hosts, {offline} offline")
        log.info("fleet run %s accepted: %d hosts: %s", group.id, len(targets), _cmd(group))
        return {"group": _public(group)}

    def _check(self, group: Group) -> str:
        try:
            return self.gate.check_group(group, time.time())
        except Refused as exc:
            key = group.signature.key_id
            audit_group("fleet-create", group.id, key, str(exc), logging.WARNING)
            raise SpecError(str(exc)) from None

    async def get(self, req: dict[str, Any]) -> dict[str, Any]:
        group, _ = await self.groups.get(_group_id(req))
        jobs = await self.groups.parts(group)
        hosts = [_host_row(t.host, t.online, jobs.get(t.host)) for t in group.targets]
        found: dict[str, int] = {}
        for row in hosts:
            found[row["result"]] = found.get(row["result"], 0) + 1
        counts = {str(r): found[str(r)] for r in rollout.SUMMARY_ORDER if str(r) in found}
        return {"group": _public(group), "hosts": hosts, "counts": counts}

    async def cancel(self, req: dict[str, Any]) -> dict[str, Any]:
        group_id = _group_id(req)
        raw = req.get("signature")
        try:
            signer = self.gate.check_group_cancel(group_id, raw, time.time())
        except Refused as exc:
            key = raw.get("key_id") if isinstance(raw, dict) else None
            audit_group(
                "fleet-cancel", group_id, str(key)[:64] if key else None, str(exc), logging.WARNING
            )
            raise SpecError(str(exc)) from None
        group, revision = await self.groups.get(group_id)
        if not group.canceled and not group.done:
            canceled = dataclasses.replace(group, canceled=True)
            if not await self.groups.replace(canceled, revision):
                raise FleetError(f"fleet run {group_id} changed meanwhile; try again")
            group = canceled
        audit_group("fleet-cancel", group_id, signer, "canceled" if group.canceled else "ended")
        return {"group": _public(group)}


def _host_row(host: str, online: bool, job: Job | None) -> dict[str, Any]:
    """One line of the per-host table: its result and what its job says."""
    row: dict[str, Any] = {"host": host, "online_at_accept": online}
    row["result"] = str(rollout.result_of(job))
    if job is None:
        return row
    first = job.attempts[0].started_at if job.attempts else None
    last = job.attempts[-1].ended_at if job.attempts else None
    lines = [line for line in job.output_tail.splitlines() if line.strip()]
    row.update(
        job=job.id,
        state=str(job.state),
        exit_code=job.exit_code,
        reason=job.reason,
        duration=None if first is None or last is None else round(last - first, 3),
        last_line=lines[-1][-LAST_LINE_CHARS:] if lines else "",
        attempts=len(job.attempts),
    )
    return row


def _group_id(req: dict[str, Any]) -> str:
    group_id = req.get("id")
    if not isinstance(group_id, str) or not GROUP_ID_RE.match(group_id):
        raise SpecError(f"id must be a fleet run id (g- and 20 hex digits), got {group_id!r}")
    return group_id


def _cmd(group: Group) -> str:
    return str(group.definition.job["cmd"])[:200]


def _public(group: Group) -> dict[str, Any]:
    record = group.to_dict()
    record.pop("v")
    record["id"] = group.id
    record["key_id"] = group.signature.key_id
    record["targets"] = [{"host": t.host, "online": t.online} for t in group.targets]
    return record
