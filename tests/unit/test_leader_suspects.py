"""Every agent suspects a leader whose key went while it was silent, not only its deposer."""

from __future__ import annotations

import time

from schedagent.core.names import Keys
from schedagent.daemon.leader_heartbeat import GONE_SILENT, LeaderHeartbeat
from schedagent.dev.memstore import MemStore
from schedagent.etcd.election import Election
from schedagent.etcd.session import Session
from schedagent.etcd.store import WatchEvent

KEYS = Keys("/t")
KEY = KEYS.candidate(1)


def heartbeat(node: str = "node3") -> LeaderHeartbeat:
    store = MemStore()
    election = Election(store, KEYS, Session(store, 3), node)  # type: ignore[arg-type]
    # The bus is not used by what this test drives: beats heard, candidates watched.
    return LeaderHeartbeat(None, store, election)  # type: ignore[arg-type]


def stand_and_go(beat: LeaderHeartbeat, node: str, silent_for: float | None) -> None:
    """node's candidate key (token 7) appears, its last beat was silent_for ago, it goes."""
    mirror = beat.election.candidates
    mirror.apply(WatchEvent(KEY, node.encode(), False, 7, 7))
    if silent_for is not None:
        beat.last_beat[7] = time.monotonic() - silent_for
    mirror.apply(WatchEvent(KEY, b"", True, 8, 0))


def test_a_leader_whose_key_went_while_silent_is_a_suspect_of_its_successor() -> None:
    # Before: only the agent that deleted the key suspected the node, and another led
    # next: it placed jobs on the frozen node, which came back when its lease ran out.
    beat = heartbeat()
    stand_and_go(beat, "node1", GONE_SILENT + 1.0)
    assert beat.suspects(4.0) == {"node1"}


def test_a_leader_that_beat_until_its_key_went_is_no_suspect() -> None:
    beat = heartbeat()
    stand_and_go(beat, "node1", 0.1)
    assert beat.suspects(4.0) == set()


def test_never_heard_and_self_are_no_suspects() -> None:
    unheard = heartbeat()
    stand_and_go(unheard, "node1", None)
    assert unheard.suspects(4.0) == set()
    own = heartbeat("node1")
    stand_and_go(own, "node1", GONE_SILENT + 1.0)
    assert own.suspects(4.0) == set()
