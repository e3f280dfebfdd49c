"""The fence's arithmetic and verdicts, as pure functions (docs/semantics.md, "Fenced execution").

An agent's lease lives at least `ttl` seconds (etcd's clock) after etcd received the
last refresh, so at least `ttl` after the agent *sent* it. The agent stops its jobs
before then: its deadline is `ttl * (1 - RATE) - LAG` after that send, on its own
clock. The leader retries a lost node's running attempts only `lost_grace(ttl)` after
it saw them lost, which covers what the kill and a frozen agent's watchdog take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from schedagent.core.model import JobState

# How much faster one host's clock may run than another's: 1%, twenty times what NTP
# ever slews (500 ppm), so the lease's TTL on etcd's clock is at least
# TTL * (1 - RATE) on ours.
RATE = 0.01
# How late the fence's timer may fire on a busy event loop (it looks every CHECK s).
CHECK = 0.1
LAG = 0.5
# A job the fence stops gets SIGTERM, then SIGKILL this much later (not
# jobs.kill_grace: the lease is about to expire) ...
FENCE_KILL_GRACE = 1.0
# ... and is gone this long after SIGKILL (a process in uninterruptible sleep is not:
# docs/semantics.md says so).
KILL_LATENCY = 0.2
MIN_GRACE = 5.0
# From a dead agent's end to its jobs' end: systemd runs its ExecStopPost= (schedagent
# stop-post) ~0.07 s after the main process died, which kills the jobs' slice within
# 0.26 s (measured, docs/containment.md): rounded up.
STOP_POST = 0.45
# While cut off, an agent asks its peers over NATS this often.
ASK_INTERVAL = 1.0
NEVER = float("-inf")


def deadline_after(ttl: float) -> float:
    """Seconds after a successful refresh was sent at which the agent must kill."""
    return ttl * (1 - RATE) - LAG


def expiry_after(ttl: float) -> float:
    """Seconds after a successful refresh was sent before which the lease is alive."""
    return ttl * (1 - RATE)


def lost_grace(ttl: float) -> float:
    """How long the leader waits, after it saw a running attempt's node lost, to retry it.

    It covers the fence's kill (FENCE_KILL_GRACE + KILL_LATENCY), a frozen agent's
    watchdog (`watchdog_limit`) and the time a cut-off agent needs to hear that a peer
    reaches etcd again (`stop_window`), each with the clock-rate allowance.
    """
    return max(ttl / 2, MIN_GRACE)


def stop_window(grace: float) -> float:
    """How long after the last moment no leader could have reached etcd the agent may
    start stopping its jobs and still have them gone before a retry can start."""
    return grace * (1 - RATE) - FENCE_KILL_GRACE - KILL_LATENCY - LAG


def watchdog_limit(ttl: float) -> float:
    """The longest systemd WatchdogSec= that still kills a frozen agent's jobs in time.

    A frozen agent is killed (with its unit's control group) at most WatchdogSec after
    its last ping; it may have frozen just after sending SIGTERM at its deadline, before
    the SIGKILL FENCE_KILL_GRACE later. The new attempt starts no sooner than
    (ttl + grace) * (1 - RATE) after the last refresh; the jobs are gone by
    ttl * (1 - RATE) + FENCE_KILL_GRACE + watchdog + STOP_POST + KILL_LATENCY (the
    jobs are not in the agent's cgroup: its ExecStopPost= kills them).
    """
    return lost_grace(ttl) * (1 - RATE) - FENCE_KILL_GRACE - STOP_POST - KILL_LATENCY


def ttl_for_watchdog(watchdog: float) -> int:
    """The smallest node_ttl whose watchdog_limit allows this WatchdogSec=."""
    ttl = 2
    while watchdog_limit(ttl) < watchdog:
        ttl += 1
    return ttl


def retry_due(state: JobState, lost_since: float, now: float, grace: float) -> float:
    """Seconds until the leader may close a lost attempt (0: now).

    An ASSIGNED attempt has run nothing (its worker records RUNNING, fenced, before it
    starts the command), so it goes back at once; a RUNNING one waits out the grace.
    """
    if state != JobState.RUNNING:
        return 0.0
    return max(0.0, lost_since + grace - now)


@dataclasses.dataclass(frozen=True)
class Report:
    """One answer of a peer over NATS, on our clock: when we heard it, whether it
    reached etcd, and when it sent its last good lease refresh (NEVER: never)."""

    heard_at: float
    reaching: bool
    last_ok: float


def stop_by(
    peers: Iterable[str],
    reports: Mapping[str, Sequence[Report]],
    expiry: float,
    grace: float,
    now: float,
) -> tuple[float, str]:
    """When, at the latest, an agent past its deadline must stop its jobs; and why.

    Past `expiry` (the earliest its lease can be gone) a leader retries its attempts
    only `grace` after it first reached etcd at or after then. A peer that said, at
    time h, that it cannot reach etcd and has not since `expiry` cannot do so before h
    + grace: the jobs may run until the oldest such clearance of any peer (its latest
    one) plus `stop_window`. A peer never cleared so (silent, reaching etcd, or
    reaching it since `expiry`) means now (NEVER). With no peer to ask, nobody can
    say: now as well.
    """
    names = sorted(set(peers))
    if not names:
        return NEVER, "no other agent to ask whether etcd is down for all"
    cleared = {name: _cleared_at(reports.get(name, ()), expiry) for name in names}
    oldest = min(names, key=lambda name: cleared[name])
    latest = reports.get(oldest, ())
    if cleared[oldest] == NEVER:
        if not latest:
            return NEVER, f"no answer over NATS from {oldest}"
        if latest[-1].reaching:
            return NEVER, f"etcd is reachable from {oldest}"
        return NEVER, f"{oldest} reached etcd since this agent's lease may have expired"
    why = (
        f"{len(names)} other agent(s) cannot reach etcd either; "
        f"{oldest} said so {now - cleared[oldest]:.1f}s ago"
    )
    return cleared[oldest] + stop_window(grace), why


def _cleared_at(reports: Sequence[Report], expiry: float) -> float:
    """The latest answer saying etcd is out of reach and was since before expiry."""
    return max(
        (r.heard_at for r in reports if not r.reaching and r.last_ok < expiry), default=NEVER
    )
