"""A fleet run's roll-out, decided from its parts' states alone: who starts, who is skipped.

The leader calls `plan` on every pass with what etcd holds now (each target's job, or
none yet), never with what it remembers, so a new leader decides exactly as the old
one would have: the budget is counted from the jobs' states, the hosts at once from the
live jobs.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from schedagent.core.fleet import Policy, Target
from schedagent.core.model import Job, JobState

UNREACHABLE = "unreachable"
SKIPPED = "skipped"


class Result(enum.StrEnum):
    WAITING = "waiting"  # no job yet
    PENDING = "pending"  # a job, not started
    RUNNING = "running"  # a job ASSIGNED or RUNNING
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # FAILED or TIMED_OUT
    CANCELED = "canceled"  # canceled by an operator
    UNREACHABLE = "unreachable"  # offline at its turn, past the offline wait
    SKIPPED = "skipped"  # the budget, a canary or a cancel stopped the roll-out first

    @property
    def final(self) -> bool:
        return self not in (Result.WAITING, Result.PENDING, Result.RUNNING)


# The order of a summary line and of counts.
SUMMARY_ORDER = (
    Result.SUCCEEDED,
    Result.FAILED,
    Result.CANCELED,
    Result.UNREACHABLE,
    Result.SKIPPED,
    Result.RUNNING,
    Result.PENDING,
    Result.WAITING,
)


def result_of(job: Job | None) -> Result:
    """A target's result from its job: the leader ends an unreachable or skipped part
    as CANCELED with a reason that starts with the result's name."""
    if job is None:
        return Result.WAITING
    if job.state == JobState.PENDING:
        return Result.PENDING
    if job.state.holds_cpus:
        return Result.RUNNING
    if job.state == JobState.SUCCEEDED:
        return Result.SUCCEEDED
    if job.state in (JobState.FAILED, JobState.TIMED_OUT):
        return Result.FAILED
    reason = job.reason or ""
    for special in (Result.UNREACHABLE, Result.SKIPPED):
        if reason.startswith(f"{special}:"):
            return special
    return Result.CANCELED


@dataclasses.dataclass(frozen=True)
class Part:
    result: Result
    ended_at: float | None = None  # when its job became final


@dataclasses.dataclass(frozen=True)
class Situation:
    """All a decision reads: the group's policy and targets, each target's part (absent:
    no job yet), the hosts online now, the time, and whether the group was canceled."""

    policy: Policy
    targets: Sequence[Target]
    parts: Mapping[str, Part]
    online: set[str]
    now: float
    accepted_at: float
    canceled: bool = False

    def result(self, host: str) -> Result:
        part = self.parts.get(host)
        return Result.WAITING if part is None else part.result

    def hosts(self, *results: Result) -> list[str]:
        return [t.host for t in self.targets if self.result(t.host) in results]

    def past_offline_wait(self) -> bool:
        return self.now >= self.accepted_at + self.policy.offline_wait


@dataclasses.dataclass
class Plan:
    """What to do now: start these hosts' parts; end these as unreachable or skipped
    (host -> reason); cancel these live parts. done: every target has a final result.
    wake_at: when the decision may change with no job changing (a batch wait ends, an
    offline wait ends)."""

    start: list[str] = dataclasses.field(default_factory=list)
    unreachable: dict[str, str] = dataclasses.field(default_factory=dict)
    skip: dict[str, str] = dataclasses.field(default_factory=dict)
    cancel: list[str] = dataclasses.field(default_factory=list)
    done: bool = False
    wake_at: float | None = None


def plan(s: Situation) -> Plan:
    """The roll-out's next step."""
    waiting = s.hosts(Result.WAITING)
    live = s.hosts(Result.PENDING, Result.RUNNING)
    out = Plan(done=not waiting and not live)
    if s.canceled:
        out.skip = {h: f"{SKIPPED}: the fleet run was canceled" for h in waiting}
        out.cancel = live
        return out
    out.unreachable = _unreachable(s, live)
    waiting = [h for h in waiting if h not in out.unreachable]
    stopped = _stopped_by(s)
    if stopped is not None:
        out.skip = {h: f"{SKIPPED}: {stopped}" for h in waiting}
        return out
    eligible, why_not = _canary_gate(s, waiting)
    if why_not is not None:
        out.skip = {h: f"{SKIPPED}: {why_not}" for h in waiting}
        return out
    _start(s, eligible, out)
    return out


def _unreachable(s: Situation, live: list[str]) -> dict[str, str]:
    """Targets offline past the offline wait: those offline when the run was accepted
    (whatever their turn), and parts made but not started whose host is gone."""
    if not s.past_offline_wait():
        return {}
    found = {}
    for target in s.targets:
        host = target.host
        if host in s.online:
            continue
        if (not target.online and s.result(host) == Result.WAITING) or (
            host in live and s.result(host) == Result.PENDING
        ):
            found[host] = f"{UNREACHABLE}: {host} offline for the run's offline wait"
    return found


def _stopped_by(s: Situation) -> str | None:
    """Why no more hosts start: more failed than the budget allows."""
    allowed = s.policy.failures_allowed(len(s.targets))
    failed = len(s.hosts(Result.FAILED, Result.CANCELED))
    if allowed is None or failed <= allowed:
        return None
    return f"the failure budget stopped the roll-out ({failed} failed, at most {allowed} allowed)"


def _canary_gate(s: Situation, waiting: list[str]) -> tuple[list[str], str | None]:
    """The hosts that may start now: the canaries alone until they have all ended, then
    the rest, unless a canary did not succeed (then why the rest is skipped)."""
    canaries = [t.host for t in s.targets[: s.policy.canary]]
    if not canaries:
        return waiting, None
    if not all(s.result(h).final for h in canaries):
        return [h for h in waiting if h in canaries], None
    failed = [h for h in canaries if s.result(h) != Result.SUCCEEDED]
    if failed:
        return [], f"canary {failed[0]} did not succeed ({s.result(failed[0])})"
    return waiting, None


def _start(s: Situation, eligible: list[str], out: Plan) -> None:
    """Start eligible online hosts in target order, as many as the free slots allow."""
    free, cooling_until = _free_slots(s)
    deadline = s.accepted_at + s.policy.offline_wait
    wakes = [] if cooling_until is None else [cooling_until]
    for host in eligible:
        if host not in s.online:
            if host not in out.unreachable and not s.past_offline_wait():
                wakes.append(deadline)  # its turn, but not back yet: the others go first
            elif host not in out.unreachable:
                out.unreachable[host] = f"{UNREACHABLE}: {host} offline at its turn"
            continue
        if free <= 0:
            break
        out.start.append(host)
        free -= 1
    out.wake_at = min(wakes, default=None)


def _free_slots(s: Situation) -> tuple[int, float | None]:
    """Hosts that may start now, and when the next cooling slot frees: a slot is free
    again batch_wait after the part that held it ended."""
    busy = len(s.hosts(Result.PENDING, Result.RUNNING))
    cooling = []
    if s.policy.batch_wait > 0:
        for part in s.parts.values():
            if part.ended_at is not None and part.result.final:
                until = part.ended_at + s.policy.batch_wait
                if until > s.now:
                    cooling.append(until)
    free = s.policy.parallel(len(s.targets)) - busy - len(cooling)
    return free, min(cooling, default=None)


def counts(s: Situation) -> dict[str, int]:
    """How many targets have each result (only results some target has)."""
    found: dict[str, int] = {}
    for target in s.targets:
        result = str(s.result(target.host))
        found[result] = found.get(result, 0) + 1
    return {str(r): found[str(r)] for r in SUMMARY_ORDER if str(r) in found}


def summary(found: Mapping[str, int]) -> str:
    """`42 succeeded, 1 failed, 2 unreachable, 5 skipped`."""
    parts = [f"{found[str(r)]} {r}" for r in SUMMARY_ORDER if found.get(str(r))]
    return ", ".join(parts) or "no hosts"
