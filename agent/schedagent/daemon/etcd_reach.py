"""Over NATS, whether the other agents reach etcd: an outage is not a partition.

While this agent cannot refresh its lease it asks on `{np}.reach` once a second, with
its own answer and a reply inbox; every agent answers to that inbox with whether it
reaches etcd, and says so unasked when that changes. Nothing is sent while every
agent reaches etcd. core.fencing.stop_by turns the answers into a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import nats.errors

from schedagent.core import fencing, wire
from schedagent.errors import WireError
from schedagent.etcd.session import Session
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

# Per peer: a minute of answers, one a second while asked; enough to find the last one
# before etcd came back.
REPORTS_KEPT = 64


class EtcdReach:
    """Answers peers, asks them while cut off, and keeps what each said lately."""

    def __init__(
        self, bus: Bus, session: Session, node: str, peers: Callable[[], Iterable[str]]
    ) -> None:
        self.bus = bus
        self.session = session
        self.node = node
        self.peers = peers
        self.reports: dict[str, collections.deque[fencing.Report]] = {}

    def stop_by(self) -> tuple[float, str]:
        """When this agent, past its deadline, must stop its jobs, and why (stop_by).

        The peers are those etcd listed when it was last reached, and any that answered
        since (an agent that joined meanwhile); not one that answered only before and
        has left since.
        """
        session = self.session
        since = session.refreshed_at if session.refreshed_at is not None else fencing.NEVER
        lately = {name for name, heard in self.reports.items() if heard[-1].heard_at >= since}
        others = (set(self.peers()) | lately) - {self.node}
        grace = fencing.lost_grace(session.ttl)
        return fencing.stop_by(others, self.reports, session.expiry, grace, session.clock())

    async def run(self) -> None:
        nc = self.bus.nc
        subject = self.bus.subjects.reach()
        inbox = nc.new_inbox()
        subs = [
            await nc.subscribe(subject, cb=self._on_message),
            await nc.subscribe(inbox, cb=self._on_message),
        ]
        try:
            await self._talk(subject, inbox)
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _talk(self, subject: str, inbox: str) -> None:
        said = self.session.reaching
        asked_at = -fencing.ASK_INTERVAL
        while True:
            now = self.session.clock()
            reaching = self.session.reaching
            if reaching != said:
                await self._send(subject, None)  # news for the askers: no reply wanted
                said = reaching
            if not reaching and now - asked_at >= fencing.ASK_INTERVAL:
                await self._send(subject, inbox)
                asked_at = now
            await asyncio.sleep(fencing.CHECK)

    def _answer(self) -> bytes:
        return wire.reach(self.node, self.session.reaching, self.session.age())

    async def _send(self, subject: str, reply: str | None) -> None:
        try:
            await self.bus.nc.publish(subject, self._answer(), reply=reply or "")
        except (nats.errors.Error, OSError) as exc:
            log.debug("could not publish on %s: %s", subject, exc)

    async def _on_message(self, msg: Any) -> None:
        try:
            reach = wire.parse_reach(msg.data)
        except WireError as exc:
            log.warning("dropping malformed etcd reach message (%s): %r", exc, msg.data[:200])
            return
        if reach.node == self.node:
            return  # our own question, echoed back
        now = self.session.clock()
        last_ok = fencing.NEVER if reach.age is None else now - reach.age
        heard = self.reports.setdefault(reach.node, collections.deque(maxlen=REPORTS_KEPT))
        heard.append(fencing.Report(now, reach.reaching, last_ok))
        if reach.reaching and not self.session.reaching:
            self.session.poke()
        if msg.reply:
            await self._send(msg.reply, None)
