"""WaitLimit: when `--wait` gives up, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from schedagent.ctl.exits import EXIT_WAIT_TIMEOUT
from schedagent.ctl.waitlimit import UNPLACEABLE_GRACE, WaitGaveUp, WaitLimit

JOB = "018f00000000deadbeef"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reply(state: str = "PENDING", unplaceable: bool = False, why: str = "") -> dict[str, Any]:
    return {"job": {"state": state}, "pending_reason": why or None, "unplaceable": unplaceable}


def test_without_a_timeout_only_an_unplaceable_job_is_given_up_on() -> None:
    clock = Clock()
    limit = WaitLimit(None, clock)
    limit.check(JOB, reply("RUNNING"))
    clock.now += 10 * UNPLACEABLE_GRACE
    limit.check(JOB, reply("RUNNING"))  # a long job is waited for
    limit.check(JOB, reply(unplaceable=True, why="no node matches"))
    clock.now += UNPLACEABLE_GRACE - 1
    limit.check(JOB, reply(unplaceable=True, why="no node matches"))
    assert limit.pause(30) == pytest.approx(1)  # wakes when the grace ends, not later
    clock.now += 1
    with pytest.raises(WaitGaveUp) as raised:
        limit.check(JOB, reply(unplaceable=True, why="no node matches"))
    assert raised.value.exit_code == EXIT_WAIT_TIMEOUT
    assert "unplaceable for 60s: still PENDING: no node matches" in str(raised.value)
    assert f"schedctl explain {JOB}" in str(raised.value)


def test_a_job_that_becomes_placeable_starts_the_grace_again() -> None:
    clock = Clock()
    limit = WaitLimit(None, clock)
    limit.check(JOB, reply(unplaceable=True))
    clock.now += UNPLACEABLE_GRACE - 1
    limit.check(JOB, reply(why="waiting for free CPUs"))
    clock.now += UNPLACEABLE_GRACE - 1
    limit.check(JOB, reply(unplaceable=True))
    limit.check(JOB, None)  # no answer this time: judged on what was seen
    clock.now += UNPLACEABLE_GRACE - 1
    limit.check(JOB, reply(unplaceable=True))


def test_a_timeout_bounds_the_whole_wait_and_zero_none() -> None:
    clock = Clock()
    bounded = WaitLimit(5, clock)
    forever = WaitLimit(0, clock)
    clock.now += 4.9
    bounded.check(JOB, reply("RUNNING"))
    clock.now += 0.1
    with pytest.raises(WaitGaveUp, match="after 5s: still RUNNING"):
        bounded.check(JOB, reply("RUNNING"))
    clock.now += 100 * UNPLACEABLE_GRACE
    forever.check(JOB, reply(unplaceable=True))
    clock.now += 100 * UNPLACEABLE_GRACE
    forever.check(JOB, reply(unplaceable=True))
