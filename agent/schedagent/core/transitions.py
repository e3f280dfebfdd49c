"""The job state machine as pure functions: each takes a record and returns the next one."""

from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Collection

from schedagent.core.model import Attempt, Job, JobState, Outcome
from schedagent.core.tail import Tail

# Attempt end states that use up one of the job's retries.
RETRYABLE = frozenset({str(JobState.FAILED), str(JobState.TIMED_OUT)})
HANDED_BACK = "handed back"
CANCELED = "canceled"
# Re-sends of a dispatch a live node does not take up before the leader hands it back.
DISPATCHES_BEFORE_HAND_BACK = 3
# Why the reconciler closed a RUNNING attempt its own node does not run.
AGENT_RESTARTED = "agent restarted"
LEASE_LOST = "agent lost its etcd lease"
NEVER_STARTED = "recorded running, but its agent never started it"
LOST_TRACK = "its agent lost track of it"


@dataclasses.dataclass(frozen=True)
class Backoff:
    base: float
    cap: float

    def delay(self, failures: int) -> float:
        """Exponential in the failures so far, plus up to 25% jitter, capped."""
        raw = self.base * 2.0 ** max(failures - 1, 0)
        return float(min(raw * (1 + random.random() / 4), self.cap))


def failures(job: Job) -> int:
    return sum(1 for a in job.attempts if a.state in RETRYABLE)


def assign(job: Job, node: str, now: float) -> Job | None:
    if job.state != JobState.PENDING or job.cancel_requested:
        return None
    job.state = JobState.ASSIGNED
    job.node = node
    job.reason = None
    job.attempts.append(Attempt(n=job.attempt, node=node, assigned_at=now))
    return job


def owns(job: Job, node: str, attempt: int, state: JobState) -> bool:
    """The worker's fence: the job is still this node's attempt, in the expected state."""
    return job.state == state and job.node == node and job.attempt == attempt


def start(job: Job, node: str, attempt: int, now: float, lease: int = 0) -> Job | None:
    if not owns(job, node, attempt, JobState.ASSIGNED):
        return None
    job.state = JobState.RUNNING
    current = job.current_attempt()
    if current is not None:
        current.started_at = now
        current.lease = lease or None
    return job


def refuse(job: Job, node: str, attempt: int, reason: str, now: float) -> Job | None:
    """The worker will not run this attempt (security): the job fails, no retry."""
    if not owns(job, node, attempt, JobState.ASSIGNED):
        return None
    _close_attempt(job, str(JobState.FAILED), reason, now)
    job.state = JobState.FAILED
    job.reason = reason
    return job


def record_pid(job: Job, node: str, attempt: int, pid: int) -> Job | None:
    if not owns(job, node, attempt, JobState.RUNNING):
        return None
    job.pid = pid
    return job


def outcome_state(outcome: Outcome, timeout: float | None) -> tuple[JobState, str | None]:
    if outcome.canceled:
        return JobState.CANCELED, "canceled"
    if outcome.error is not None:
        return JobState.FAILED, outcome.error
    if outcome.timed_out:
        return JobState.TIMED_OUT, f"timed out after {timeout:g}s"
    if outcome.signal is not None:
        return JobState.FAILED, f"killed by {signal_name(outcome.signal)}"
    if outcome.exit_code == 0:
        return JobState.SUCCEEDED, "exit code 0"
    return JobState.FAILED, f"exit code {outcome.exit_code}"


def signal_name(number: int) -> str:
    """SIGTERM, SIGRTMIN+1, or "signal 99": Python names no real-time signal but the first."""
    try:
        return signal.Signals(number).name
    except ValueError:
        pass
    low, high = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    if low < number <= high:
        return f"SIGRTMIN+{number - low}"
    return f"signal {number}"


def finish(
    job: Job,
    node: str,
    attempt: int,
    outcome: Outcome,
    tail: Tail,
    backoff: Backoff,
) -> Job | None:
    """Close the running attempt; retry it (PENDING, attempt+1) if retries remain."""
    if not owns(job, node, attempt, JobState.RUNNING):
        return None
    state, reason = outcome_state(outcome, job.spec.timeout)
    current = job.current_attempt()
    if current is not None:
        current.ended_at = outcome.ended_at
        current.exit_code = outcome.exit_code
        current.signal = outcome.signal
        current.state = str(state)
        current.reason = reason
        current.usage = None if outcome.usage is None else dict(outcome.usage)
    job.output_tail, job.output_tail_base64 = tail.text, tail.base64
    job.exit_code = outcome.exit_code
    job.pid = None
    if state in (JobState.FAILED, JobState.TIMED_OUT) and failures(job) <= job.spec.retries:
        return _retry(
            job, f"attempt {attempt} {str(state).lower()}: {reason}", backoff, outcome.ended_at
        )
    job.state = state
    job.reason = reason
    return job


def hand_back(job: Job, node: str, attempt: int, reason: str, now: float) -> Job | None:
    """Return an attempt this node will not finish (agent stopping) without using a retry."""
    if job.node != node or job.attempt != attempt or not job.state.holds_cpus:
        return None
    _close_attempt(job, HANDED_BACK, reason, now)
    job.pid = None
    if job.cancel_requested:
        return _end_canceled(job)
    job.state = JobState.PENDING
    job.attempt += 1
    job.node = None
    job.reason = reason
    job.not_before = now
    return job


def lose(job: Job, node: str, reason: str, backoff: Backoff, now: float) -> Job | None:
    """The leader's verdict on an attempt whose agent is gone: retry it or fail the job.

    An attempt still ASSIGNED has run nothing (a worker starts the command only after
    its fenced RUNNING write, which this write makes fail), so it goes back to the queue
    without using a retry. Typically its agent stopped politely with the dispatch still
    queued, or was placed on by a leader that had not yet seen it draining.
    """
    if job.node != node or not job.state.holds_cpus:
        return None
    if job.state == JobState.ASSIGNED:
        return hand_back(job, node, job.attempt, f"{reason} before the attempt started", now)
    _close_attempt(job, str(JobState.FAILED), reason, now)
    job.pid = None
    if failures(job) <= job.spec.retries:
        return _retry(job, f"attempt {job.attempt}: {reason}", backoff, now)
    if job.cancel_requested:
        return _end_canceled(job)
    job.state = JobState.FAILED
    job.reason = reason
    return job


def stalled(job: Job, dispatches: int, now: float) -> Job | None:
    """The leader's verdict on an attempt a live node has not taken up: after
    DISPATCHES_BEFORE_HAND_BACK dispatches it goes back to the queue, no retry used."""
    if job.state != JobState.ASSIGNED or job.node is None:
        return None
    if dispatches < DISPATCHES_BEFORE_HAND_BACK:
        return None
    reason = f"not taken up by its node after {dispatches} dispatches"
    return hand_back(job, job.node, job.attempt, reason, now)


def settle_cancel(job: Job) -> Job | None:
    """A queued job whose cancel was asked for ends now instead of being placed.

    Only records from before cancels were final on every path are in this state."""
    if job.state != JobState.PENDING or not job.cancel_requested:
        return None
    return _end_canceled(job)


def skip(job: Job, reason: str) -> Job | None:
    """A job whose parent did not succeed (core/deps.py) ends without running: CANCELED,
    not FAILED, since nothing of its own failed; the reason names the parent."""
    if job.state != JobState.PENDING or job.attempts:
        return None
    job.state = JobState.CANCELED
    job.reason = reason
    job.pid = None
    return job


def abandon(job: Job, reason: str) -> Job | None:
    """A queued fleet part whose host stayed offline past the run's offline wait ends
    without running (again): CANCELED, the reason saying it was unreachable."""
    if job.state != JobState.PENDING:
        return None
    job.state = JobState.CANCELED
    job.reason = reason
    job.pid = None
    return job


def eligible_at(job: Job, seen_at: float) -> float:
    """When a PENDING job may be placed, on the clock of whoever saw it at seen_at.

    not_before and updated_at come from the clock of the agent that wrote the record;
    their difference is the backoff it chose, which holds on any clock. Counted from
    when it was seen, no later than not_before itself: a worker's clock ahead of the
    leader's, or a new leader seeing an old retry, never stretches a backoff (a clock
    behind can shorten it, by at most the skew).
    """
    return min(job.not_before, seen_at + max(0.0, job.not_before - job.updated_at))


def lost_reason(job: Job, node_lease: int | None, node_started_at: float) -> str | None:
    """Why this job's attempt has no live agent behind it, or None if it has one.

    node_lease is the lease in the node's current record (None: no record).
    """
    if not job.state.holds_cpus:
        return None
    if node_lease is None:
        return "node lost"
    current = job.current_attempt()
    if job.state != JobState.RUNNING or current is None or current.lease is None:
        return None
    if current.lease == node_lease:
        return None
    started = current.started_at or 0.0
    return AGENT_RESTARTED if node_started_at > started else "agent lost its etcd lease"


def orphaned(
    job: Job,
    node: str,
    lease: int,
    ran_here: bool,
    backoff: Backoff,
    now: float,
    earlier_leases: Collection[int] = (),
) -> Job | None:
    """The reconciler's verdict on a RUNNING attempt of its node that it does not run.

    Started by another incarnation of the agent: closed as the leader would; under an
    earlier lease of this same process: lost with its lease, not a restart. Started
    under this lease but never run (the RUNNING write committed, its reply was lost):
    handed back, no retry used. Run here but its end never recorded: lost, like a node.
    """
    if not owns(job, node, job.attempt, JobState.RUNNING):
        return None
    current = job.current_attempt()
    if current is not None and current.lease != lease and current.lease in earlier_leases:
        return lose(job, node, LEASE_LOST, backoff, now)
    if current is None or current.lease != lease:
        return lose(job, node, AGENT_RESTARTED, backoff, now)
    if ran_here:
        return lose(job, node, LOST_TRACK, backoff, now)
    return hand_back(job, node, job.attempt, NEVER_STARTED, now)


def cancel(job: Job, now: float) -> Job | None:
    """PENDING/ASSIGNED end at once; RUNNING is flagged for its worker to kill."""
    if job.state.final or job.cancel_requested:
        return None
    job.cancel_requested = True
    if job.state == JobState.RUNNING:
        return job
    if job.state == JobState.ASSIGNED:
        _close_attempt(job, str(JobState.CANCELED), "canceled before it started", now)
    return _end_canceled(job)


def _end_canceled(job: Job) -> Job:
    job.state = JobState.CANCELED
    job.reason = CANCELED
    job.pid = None
    return job


def _retry(job: Job, reason: str, backoff: Backoff, now: float) -> Job:
    """The next attempt, unless a cancel was asked for: then the job ends canceled."""
    if job.cancel_requested:
        return _end_canceled(job)
    job.state = JobState.PENDING
    job.attempt += 1
    job.node = None
    job.reason = reason
    job.not_before = now + backoff.delay(failures(job))
    return job


def _close_attempt(job: Job, state: str, reason: str, now: float) -> None:
    current = job.current_attempt()
    if current is not None and current.ended_at is None:
        current.ended_at = now
        current.state = state
        current.reason = reason
