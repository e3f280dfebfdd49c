"""The guard: a systemd timer that stops the jobs of an agent that restarted if none takes them."""

from __future__ import annotations

import logging

from schedagent.core import fencing
from schedagent.host.jobslice import JOBS_SLICE
from schedagent.host.systemd_bus import Property, UnitManager

log = logging.getLogger(__name__)

TIMER = "schedagent-guard.timer"
SERVICE = "schedagent-guard.service"  # the timer's unit: the same name
SYSTEMCTL = "/bin/systemctl"
ACCURACY_USEC = 1000  # systemd's default is a minute; the deadline is seconds away


def guard_delay(refreshed_at: float, now: float, ttl: float) -> float:
    """Seconds from `now` until the guard must stop the jobs (0: at once).

    The fence would SIGTERM them at its deadline, deadline_after(ttl) after the last
    good refresh was sent (`refreshed_at`, on the same clock as `now`: session's
    fence_clock), and they would be gone FENCE_KILL_GRACE + KILL_LATENCY later. The
    guard's stop is that same SIGTERM, SIGKILL a job unit's TimeoutStopSec= later: so
    it fires that much earlier and the jobs are gone by the deadline, as with the fence.
    """
    deadline = refreshed_at + fencing.deadline_after(ttl)
    return max(0.0, deadline - fencing.FENCE_KILL_GRACE - fencing.KILL_LATENCY - now)


def timer_properties(seconds: float) -> list[Property]:
    # OnActiveSec= counts on CLOCK_MONOTONIC, which stops while the host is suspended
    # (the fence's clock does not): a guard due during a suspend fires that much late.
    return [
        ("Description", "s", "schedagent: stops the jobs a restarting agent left"),
        ("TimersMonotonic", "a(st)", [("OnActiveSec", round(seconds * 1_000_000))]),
        ("AccuracyUSec", "t", ACCURACY_USEC),
        # Gone once elapsed, so that the next handover can make it again.
        ("RemainAfterElapse", "b", False),
    ]


def service_properties() -> list[Property]:
    stop_jobs = [(SYSTEMCTL, ["systemctl", "stop", JOBS_SLICE], False)]
    return [
        ("Description", "s", "schedagent: stop the jobs no agent took over"),
        ("Type", "s", "oneshot"),
        ("ExecStart", "a(sasb)", stop_jobs),
    ]


async def arm_guard(units: UnitManager, seconds: float) -> None:
    """Have systemd stop every job in `seconds` unless disarm_guard comes first.
    ContainmentError if systemd refused (the caller must not hand the jobs over)."""
    await units.start_transient(TIMER, timer_properties(seconds), [(SERVICE, service_properties())])
    log.info("guard armed: the jobs are stopped in %.1fs unless an agent takes them", seconds)


async def disarm_guard(units: UnitManager) -> None:
    """Stop the timer (then its service, were it just running); either gone is no error."""
    await units.stop(TIMER)
    await units.stop(SERVICE)
