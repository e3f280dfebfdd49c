"""Timers: at most one time per key, the due ones earliest first (pure logic)."""

from __future__ import annotations

import random

from schedagent.core.timers import Timers


def test_due_keys_come_earliest_first_and_only_once() -> None:
    timers: Timers[str] = Timers()
    timers.schedule("b", 2.0)
    timers.schedule("a", 1.0)
    timers.schedule("c", 3.0)
    assert timers.next_at() == 1.0
    assert timers.due(2.0) == ["a", "b"]
    assert timers.due(2.0) == []
    assert timers.next_at() == 3.0 and "c" in timers and len(timers) == 1


def test_rescheduling_replaces_and_cancel_removes() -> None:
    timers: Timers[str] = Timers()
    timers.schedule("a", 1.0)
    timers.schedule("a", 5.0)
    timers.schedule("b", 2.0)
    timers.cancel("b")
    assert timers.due(4.0) == []
    assert timers.next_at() == 5.0
    assert timers.due(5.0) == ["a"]
    assert timers.next_at() is None


def test_many_reschedules_stay_correct_and_bounded() -> None:
    rng = random.Random(7)
    timers: Timers[int] = Timers()
    expected: dict[int, float] = {}
    for _ in range(5000):
        key, at = rng.randrange(50), rng.uniform(0, 100)
        timers.schedule(key, at)
        expected[key] = at
    assert len(timers._heap) <= 2 * len(expected) + 65  # stale entries are compacted away
    assert timers.due(50.0) == sorted((k for k, t in expected.items() if t <= 50), key=expected.get)
