"""EtcdReach with an in-memory NATS connection and session: answers, reports, peers."""

from __future__ import annotations

import dataclasses

from schedagent.core import fencing, wire
from schedagent.core.names import Subjects
from schedagent.daemon.etcd_reach import EtcdReach


@dataclasses.dataclass
class FakeSession:
    now: float = 100.0
    ttl: int = 5
    refreshed_at: float | None = 90.0
    reaching: bool = False
    poked: int = 0

    @property
    def expiry(self) -> float:
        assert self.refreshed_at is not None
        return self.refreshed_at + fencing.expiry_after(self.ttl)

    def clock(self) -> float:
        return self.now

    def age(self) -> float | None:
        return None if self.refreshed_at is None else self.now - self.refreshed_at

    def poke(self) -> None:
        self.poked += 1


class FakeNats:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str]] = []

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.sent.append((subject, payload, reply))


@dataclasses.dataclass
class FakeBus:
    nc: FakeNats = dataclasses.field(default_factory=FakeNats)
    subjects: Subjects = dataclasses.field(default_factory=lambda: Subjects("sched"))
    connected: bool = True


@dataclasses.dataclass
class Msg:
    data: bytes
    reply: str = ""


def reach(peers: set[str]) -> tuple[EtcdReach, FakeSession, FakeBus]:
    session, bus = FakeSession(), FakeBus()
    found = EtcdReach(bus, session, "n2", lambda: peers)  # type: ignore[arg-type]
    return found, session, bus


async def test_a_question_is_answered_to_its_inbox_with_our_own_state() -> None:
    found, _, bus = reach({"n1", "n2"})
    await found._on_message(Msg(wire.reach("n1", False, 12.0), reply="_INBOX.n1"))
    ((subject, body, reply),) = bus.nc.sent
    assert (subject, reply) == ("_INBOX.n1", "")
    assert wire.parse_reach(body) == wire.Reach("n2", False, 10.0)
    assert found.reports["n1"][-1] == fencing.Report(100.0, False, 88.0)


async def test_a_peer_reaching_etcd_again_makes_us_try_at_once() -> None:
    found, session, _ = reach({"n1", "n2"})
    await found._on_message(Msg(wire.reach("n1", True, 0.1)))
    assert session.poked == 1


async def test_our_own_echo_and_malformed_messages_are_ignored() -> None:
    found, _, bus = reach({"n1", "n2"})
    await found._on_message(Msg(wire.reach("n2", False, 1.0), reply="_INBOX.n2"))
    await found._on_message(Msg(b'{"node": "n1"}', reply="_INBOX.n1"))
    assert found.reports == {} and bus.nc.sent == []


async def test_peers_are_etcds_list_and_those_heard_since_our_last_refresh() -> None:
    found, session, _ = reach({"n1", "n2"})
    await found._on_message(Msg(wire.reach("n1", False, 11.0)))
    session.now = 80.0  # before our last refresh: a peer that has left since
    await found._on_message(Msg(wire.reach("gone", True, 0.0)))
    session.now = 100.0
    stop_by, why = found.stop_by()
    assert stop_by == 100.0 + fencing.stop_window(fencing.lost_grace(5))
    assert why.startswith("1 other agent(s) cannot reach etcd either")
    await found._on_message(Msg(wire.reach("new", False, None)))  # joined meanwhile
    assert found.stop_by()[0] == stop_by
    # Reaching etcd now, it had not at 100: no leader there retries before 100 + grace.
    await found._on_message(Msg(wire.reach("new", True, 0.2)))
    assert found.stop_by()[0] == stop_by
    # One that has reached etcd all along: stop now.
    await found._on_message(Msg(wire.reach("other", True, 0.5)))
    assert found.stop_by() == (fencing.NEVER, "etcd is reachable from other")
