"""The API schedctl calls: submit(_many), get, list, cancel, nodes, leader, schedule_*, fleet_*."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats.errors

from schedagent.config import AgentConfig
from schedagent.core import transitions, wire
from schedagent.core.deps import waits_for_parents
from schedagent.core.model import JOB_ID_RE, JobSpec, JobState, NodeRecord
from schedagent.core.names import Keys
from schedagent.core.placement import NodeView, unplaceable_reason
from schedagent.core.spec import parse_spec
from schedagent.daemon import parents
from schedagent.daemon.fleetapi import FleetApi
from schedagent.daemon.fleetlist import FleetList
from schedagent.daemon.gate import Gate, Refused, audit
from schedagent.daemon.nodeapi import NodeApi, cordon_dict
from schedagent.daemon.schedapi import ScheduleApi
from schedagent.daemon.submit import SubmitMany
from schedagent.errors import (
    ConflictError,
    NotFoundError,
    SchedagentError,
    SpecError,
    StoreUnavailableError,
)
from schedagent.etcd.cordonstore import CordonStore
from schedagent.etcd.election import Election
from schedagent.etcd.groupstore import GroupStore
from schedagent.etcd.jobstore import JobStore, decode_node
from schedagent.etcd.store import Store
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 10000
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Api:
    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        keys: Keys,
        jobs: JobStore,
        bus: Bus,
        election: Election,
    ) -> None:
        self.config = config
        self.gate = Gate(lambda: self.config.security, store, keys)
        self.store = store
        self.keys = keys
        self.jobs = jobs
        self.bus = bus
        self.election = election
        self.handlers: dict[str, Handler] = {
            "submit": self.submit,
            "submit_many": SubmitMany(self._checked_spec, jobs, bus),
            "get": self.get,
            "list": self.list_jobs,
            "cancel": self.cancel,
            "nodes": self.nodes,
            "leader": self.leader,
        }
        self.handlers.update(ScheduleApi(config, self.gate, jobs, bus).handlers())
        self.handlers.update(FleetApi(config, self.gate, jobs).handlers())
        self.cordons = CordonStore(store, keys)
        groups = GroupStore(store, keys)
        self.handlers["fleet_list"] = FleetList(groups, bus.max_payload)
        self.handlers.update(NodeApi(self.gate, self.cordons, groups).handlers())
        self._sub: Any = None
        self.limiter = RateLimiter()

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(
            self.bus.subjects.api("*"), queue=self.bus.subjects.API_QUEUE, cb=self._on_request
        )

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as exc:
                log.info("API unsubscribe at stop failed: %s", exc)

    async def _on_request(self, msg: Any) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        if verb in wire.LEADER_VERBS:
            return  # the leader answers on its own subscription (daemon/leaderapi.py)
        if self.limiter.allow(self.config.security.max_requests_per_second):
            reply = await self.handle(verb, msg.data)
        else:
            reply = wire.error("unavailable", "too many requests to this agent; try again")
        if msg.reply:
            body = wire.reply(reply)
            if len(body) > self.bus.max_payload():
                body = wire.reply(wire.error("internal", f"the {verb} reply is too large to send"))
            try:
                await msg.respond(body)
            except nats.errors.Error as exc:
                log.info("could not answer a %s request: %s", verb, exc)

    async def handle(self, verb: str, data: bytes) -> dict[str, Any]:
        return await answer(self.handlers, verb, data)

    async def submit(self, req: dict[str, Any]) -> dict[str, Any]:
        spec, signer = self._checked_spec(req.get("spec"))
        (unknown,) = await parents.unknown_parents(self.jobs, [spec])
        if unknown is not None:
            raise SpecError(unknown)
        job, created = await self.jobs.create(spec)
        if created:
            log.info("job %s submitted: %s", job.id, spec.cmd[:200], extra={"job_id": job.id})
            await self.bus.publish_event(job)
        audit("submit", job.id, signer, "accepted" if created else "same idempotency key")
        return {"job": job.to_dict(), "created": created}

    def _checked_spec(self, raw: object) -> tuple[JobSpec, str | None]:
        """A valid spec and the key that signed it, or SpecError: for one spec or many."""
        spec = parse_spec(raw, self.config.jobs.max_cmd_bytes)
        if len(json.dumps(dict(spec.env))) > self.config.security.max_env_bytes:
            raise SpecError(f"env larger than {self.config.security.max_env_bytes} bytes")
        return spec, self._check_signature(spec)

    def _check_signature(self, spec: JobSpec) -> str | None:
        """Refuse a bad signature at the door; the running agent checks again."""
        try:
            return self.gate.check_signature(
                spec, time.time(), self.config.security.signature_max_age
            )
        except Refused as exc:
            signature = spec.signature or {}
            audit("submit", "-", signature.get("key_id"), str(exc), logging.WARNING)
            raise SpecError(str(exc)) from None

    def _check_cancel_signature(self, job_id: str, raw_signature: object) -> str | None:
        try:
            return self.gate.check_cancel(job_id, raw_signature, time.time())
        except Refused as exc:
            key = raw_signature.get("key_id") if isinstance(raw_signature, dict) else None
            audit("cancel", job_id, str(key)[:64] if key else None, str(exc), logging.WARNING)
            raise SpecError(str(exc)) from None

    async def get(self, req: dict[str, Any]) -> dict[str, Any]:
        job, _ = await self.jobs.get(job_id_of(req))
        reason, unplaceable = None, False
        if waits_for_parents(job):
            reason = await parents.waiting_reason(self.jobs, job.spec.after)
        if job.state == JobState.PENDING and reason is None:
            reason, unplaceable = await self._pending_reason(job.spec, job.not_before)
        # unplaceable: no node could take it as the cluster stands (`--wait` gives up).
        return {"job": job.to_dict(), "pending_reason": reason, "unplaceable": unplaceable}

    async def _pending_reason(self, spec: Any, not_before: float) -> tuple[str, bool]:
        cordoned = await self.cordons.all()
        nodes = [
            NodeView(n.name, n.cpus, n.labels, n.draining or n.name in cordoned)
            for n in await self._nodes()
        ]
        reason = unplaceable_reason(spec, nodes)
        if reason is not None:
            return reason, True
        if not_before > time.time():
            return f"retry backoff: eligible in {not_before - time.time():.1f}s", False
        if self.election.leader() is None:
            return "no leader elected yet", False
        return "waiting for free CPUs on a matching node", False

    async def list_jobs(self, req: dict[str, Any]) -> dict[str, Any]:
        state, limit, before = _list_request(req)
        # Read only as far as the reply goes: records with long output tails fill a
        # NATS message after a few dozen, and `next` continues from there.
        page_size = min(max(limit, 16), 256)
        picked = self.jobs.iter_newest(state, before, page_size)
        budget = self.bus.max_payload() // 2
        out: list[dict[str, Any]] = []
        async with contextlib.aclosing(picked) as jobs:
            async for job in jobs:
                record = job.to_dict()
                budget -= len(json.dumps(record))
                if budget < 0 and out:
                    return {"jobs": out, "next": out[-1]["id"]}
                out.append(record)
                if len(out) == limit:
                    break
        return {"jobs": out, "next": None}

    async def cancel(self, req: dict[str, Any]) -> dict[str, Any]:
        job_id = job_id_of(req)
        signer = self._check_cancel_signature(job_id, req.get("signature"))
        job, changed = await self.jobs.update(job_id, lambda j: transitions.cancel(j, time.time()))
        if changed:
            log.info(
                "job %s: cancel requested (was %s)", job_id, job.state, extra={"job_id": job_id}
            )
            await self.bus.publish_event(job)
            audit("cancel", job_id, signer, f"requested while {job.state}")
            if job.state == JobState.RUNNING and job.node is not None:
                body = wire.cancel(job.id, job.attempt)
                await self.bus.publish(self.bus.subjects.control(job.node), body)
        return {"job": job.to_dict()}

    async def nodes(self, req: dict[str, Any]) -> dict[str, Any]:
        leader = self.election.leader()
        cordons = await self.cordons.all()
        out = []
        for node in sorted(await self._nodes(), key=lambda n: n.name):
            item = json.loads(node.to_json())
            item["leader"] = leader is not None and leader.node == node.name
            cordon = cordons.pop(node.name, None)
            item["cordon"] = None if cordon is None else cordon_dict(cordon)
            out.append(item)
        # Cordons of nodes not registered now (down, or not started yet) show too.
        return {"nodes": out, "cordons": [cordon_dict(c) for _, c in sorted(cordons.items())]}

    async def _nodes(self) -> list[NodeRecord]:
        kvs, _ = await self.store.get_prefix(self.keys.nodes)
        return [node for node in map(decode_node, kvs) if node is not None]

    async def leader(self, req: dict[str, Any]) -> dict[str, Any]:
        leader = self.election.leader()
        return {"leader": None if leader is None else {"node": leader.node, "token": leader.token}}


async def answer(handlers: Mapping[str, Handler], verb: str, data: bytes) -> dict[str, Any]:
    """Answer one request; every failure becomes an error reply, never an exception."""
    try:
        handler = handlers.get(verb)
        if handler is None:
            raise SpecError(f"unknown verb {verb!r} (known: {', '.join(handlers)})")
        return wire.ok(await handler(wire.parse_request(data)))
    except SpecError as exc:
        log.info("bad %s request: %s", verb, exc)
        return wire.error("bad_request", str(exc))
    except NotFoundError as exc:
        return wire.error("not_found", str(exc))
    except ConflictError as exc:
        log.info("%s request refused: %s", verb, exc)
        return wire.error("conflict", str(exc))
    except StoreUnavailableError as exc:
        log.warning("%s request failed: %s", verb, exc)
        return wire.error("unavailable", str(exc))
    except SchedagentError as exc:
        log.warning("%s request failed: %s", verb, exc)
        return wire.error("internal", str(exc))
    except Exception as exc:
        log.exception("%s request failed unexpectedly", verb)
        return wire.error("internal", f"internal error: {type(exc).__name__}")


class RateLimiter:
    """A token bucket: a burst of one second's worth, refilled at the configured rate."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = 0.0

    def allow(self, rate: float) -> bool:
        now = time.monotonic()
        self.tokens = min(rate, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _list_request(req: dict[str, Any]) -> tuple[JobState | None, int, str | None]:
    """A list request's state filter, limit and `before` id, checked."""
    state = req.get("state")
    if state is not None and (not isinstance(state, str) or state not in JobState.__members__):
        raise SpecError(f"state must be one of {', '.join(JobState.__members__)}")
    limit = req.get("limit", 50)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIST_LIMIT:
        raise SpecError(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
    before = req.get("before")
    if before is not None and (not isinstance(before, str) or not JOB_ID_RE.match(before)):
        raise SpecError("before must be a job id")
    return (None if state is None else JobState(state)), limit, before


def job_id_of(req: dict[str, Any]) -> str:
    job_id = req.get("id")
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise SpecError(f"id must be a job id (20 hex digits), got {job_id!r}")
    return job_id
