"""The verbs only the leader can answer, from its view: `explain`, while it leads.

Every agent's API takes requests in a queue group, so any agent may get one; these
verbs are left unanswered there (daemon/api.py) and the leader subscribes to their
subjects on its own, for as long as it leads. With no leader, nobody answers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import nats.errors

from schedagent.core import wire
from schedagent.core.deps import waits_for_parents
from schedagent.core.explain import Obstacles, explain
from schedagent.daemon import parents
from schedagent.daemon.api import answer, job_id_of
from schedagent.daemon.scheduler import Scheduler
from schedagent.errors import StoreUnavailableError
from schedagent.etcd.jobstore import JobStore
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)


class LeaderApi:
    def __init__(self, bus: Bus, jobs: JobStore, scheduler: Scheduler) -> None:
        self.bus = bus
        self.jobs = jobs
        self.scheduler = scheduler
        self.handlers = {"explain": self.explain}
        self._subs: list[Any] = []

    async def start(self) -> None:
        for verb in wire.LEADER_VERBS:
            subject = self.bus.subjects.api(verb)
            self._subs.append(await self.bus.nc.subscribe(subject, cb=self._on_request))

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.info("leader API unsubscribe failed: %s", exc)
        self._subs = []

    async def _on_request(self, msg: Any) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        reply = await answer(self.handlers, verb, msg.data)
        if msg.reply:
            try:
                await msg.respond(wire.reply(reply))
            except nats.errors.Error as exc:
                log.info("could not answer a %s request: %s", verb, exc)

    async def explain(self, req: dict[str, Any]) -> dict[str, Any]:
        job_id = job_id_of(req)
        if not self.scheduler.node_view.synced.is_set():
            raise StoreUnavailableError("the new leader is still reading its view; ask again")
        job, _ = await self.jobs.get(job_id)
        view, now = self.scheduler.view, time.time()
        waiting = None
        if waits_for_parents(job):
            waiting = await parents.waiting_reason(self.jobs, job.spec.after)
        free = {name: r.cpus - view.usage.used(name) for name, r in view.records.items()}
        found = explain(job, view.records.values(), free, self.obstacles(now), now, waiting)
        return wire.explanation(found)

    def obstacles(self, now: float) -> Obstacles:
        scheduler = self.scheduler
        cordons = [entry.value for entry in scheduler.cordon_view.items.values()]
        return Obstacles(
            cordoned=frozenset(c.node for c in cordons if not c.drain),
            drained=frozenset(c.node for c in cordons if c.drain),
            suspect=frozenset(scheduler.suspects()),
            shunned=frozenset(name for name, until in scheduler.shunned.items() if until > now),
        )
