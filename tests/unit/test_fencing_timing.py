"""The fence's arithmetic and verdicts (core/fencing.py), without a cluster."""

from __future__ import annotations

import pytest

from schedagent.core import fencing
from schedagent.core.fencing import Report, retry_due
from schedagent.core.model import JobState

TTLS = [2, 3, 4, 5, 10, 30, 60, 300]


@pytest.mark.parametrize("ttl", TTLS)
def test_a_cut_off_agent_kills_before_the_leader_can_retry(ttl: int) -> None:
    # On this agent's clock: the kill is sent by ttl * (1 - RATE) after the last
    # refresh was sent (deadline plus the timer's lag); SIGKILL FENCE_KILL_GRACE
    # later; gone KILL_LATENCY after that. The retry starts no sooner than
    # (ttl + grace) * (1 - RATE): the lease's TTL and the grace, each on a clock that
    # may run RATE faster than ours.
    killed = fencing.deadline_after(ttl) + fencing.LAG
    gone = killed + fencing.FENCE_KILL_GRACE + fencing.KILL_LATENCY
    retried = (ttl + fencing.lost_grace(ttl)) * (1 - fencing.RATE)
    assert gone <= retried
    assert fencing.deadline_after(ttl) > 0


@pytest.mark.parametrize("ttl", TTLS)
def test_a_frozen_agent_under_the_watchdog_limit_is_gone_in_time(ttl: int) -> None:
    watchdog = fencing.watchdog_limit(ttl)
    # Frozen right after its SIGTERM at the deadline: systemd kills it (and the unit's
    # control group) at most `watchdog` after its last ping.
    gone = ttl * (1 - fencing.RATE) + fencing.FENCE_KILL_GRACE + watchdog + fencing.KILL_LATENCY
    assert gone <= (ttl + fencing.lost_grace(ttl)) * (1 - fencing.RATE) + 1e-9


def test_the_shipped_unit_fits_the_default_ttl() -> None:
    # systemd/schedagent.service: WatchdogSec=3s with node_ttl 10 (tests/packaging too).
    assert fencing.watchdog_limit(10) >= 3.0
    assert fencing.ttl_for_watchdog(3.0) <= 10
    assert fencing.watchdog_limit(fencing.ttl_for_watchdog(30.0)) >= 30.0
    assert fencing.watchdog_limit(fencing.ttl_for_watchdog(30.0) - 1) < 30.0


def test_a_healthy_agent_misses_a_refresh_without_killing() -> None:
    # Refreshes go every ttl / 3: the deadline survives at least one missed one.
    for ttl in TTLS[1:]:
        assert fencing.deadline_after(ttl) > 2 * ttl / 3


def test_only_a_running_attempt_waits_out_the_grace() -> None:
    assert retry_due(JobState.ASSIGNED, 10.0, 10.0, 3.0) == 0.0
    assert retry_due(JobState.RUNNING, 10.0, 11.0, 3.0) == pytest.approx(2.0)
    assert retry_due(JobState.RUNNING, 10.0, 13.0, 3.0) == 0.0


GRACE = fencing.lost_grace(5)
EXPIRY = 50.0  # this agent's lease may be gone from here
NOW = 100.0


def cut(at: float, last_ok: float = 40.0) -> Report:
    """An answer heard at `at`: no etcd since last_ok (before EXPIRY unless said)."""
    return Report(at, False, last_ok)


def test_jobs_run_on_while_every_peer_keeps_saying_it_cannot_reach_etcd() -> None:
    reports = {"n1": [cut(98.0), cut(99.0)], "n3": [cut(99.5)]}
    stop_by, why = fencing.stop_by(["n1", "n3"], reports, EXPIRY, GRACE, NOW)
    # n1's latest answer is the older one: a leader cannot retry before 99 + grace.
    assert stop_by == pytest.approx(99.0 + fencing.stop_window(GRACE))
    assert stop_by > NOW and why == "2 other agent(s) cannot reach etcd either; n1 said so 1.0s ago"


def test_a_peer_that_reaches_etcd_means_stop_now() -> None:
    reports = {"n1": [cut(99.0)], "n3": [Report(99.5, True, 99.4)]}
    assert fencing.stop_by(["n1", "n3"], reports, EXPIRY, GRACE, NOW) == (
        fencing.NEVER,
        "etcd is reachable from n3",
    )


def test_a_peer_that_reached_etcd_since_the_lease_may_have_expired_means_stop_now() -> None:
    reports = {"n1": [Report(99.0, False, EXPIRY + 1)]}
    assert fencing.stop_by(["n1"], reports, EXPIRY, GRACE, NOW)[0] == fencing.NEVER


def test_when_etcd_comes_back_the_last_answer_before_counts() -> None:
    # n3 reached etcd again at 99.6: a leader there retries at 99.6 + grace at the
    # soonest, and n3 had not at 99.0, its last answer before.
    reports = {"n1": [cut(99.2)], "n3": [cut(99.0), Report(99.7, True, 99.6)]}
    stop_by, _ = fencing.stop_by(["n1", "n3"], reports, EXPIRY, GRACE, NOW)
    assert stop_by == pytest.approx(99.0 + fencing.stop_window(GRACE))


def test_a_silent_or_unknown_peer_bounds_the_wait() -> None:
    assert fencing.stop_by(["n1", "n3"], {"n1": [cut(99.0)]}, EXPIRY, GRACE, NOW) == (
        fencing.NEVER,
        "no answer over NATS from n3",
    )
    # Silent since 95: its last clearance ages out.
    stop_by, _ = fencing.stop_by(["n1"], {"n1": [cut(95.0)]}, EXPIRY, GRACE, NOW)
    assert stop_by < NOW


def test_with_no_peer_to_ask_the_deadline_holds() -> None:
    assert fencing.stop_by([], {}, EXPIRY, GRACE, NOW)[0] == fencing.NEVER


def test_the_wait_covers_asking_once_a_second_and_coming_back_after_the_peers() -> None:
    # An outage holds while answers come a second apart; after etcd's return the
    # agent's own refresh (every 0.25 s, gRPC reconnecting within 1.2 s) comes in time.
    for ttl in TTLS:
        window = fencing.stop_window(fencing.lost_grace(ttl))
        assert window > 2 * fencing.ASK_INTERVAL
        assert window - fencing.ASK_INTERVAL > 1.2 + 0.25 + fencing.CHECK
