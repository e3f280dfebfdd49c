"""The job state machine: assign, start, finish with retries, cancel, lose, hand back."""

from __future__ import annotations

import signal

from schedagent.core import transitions as t
from schedagent.core.model import Job, JobSpec, JobState, Outcome
from schedagent.core.spec import parse_spec
from schedagent.core.tail import Tail

NO_WAIT = t.Backoff(base=1.0, cap=10.0)


def new_job(**spec: object) -> Job:
    return Job(
        id="0" * 20,
        spec=parse_spec({"cmd": "true", **spec}),
        state=JobState.PENDING,
        submitted_at=0,
    )


def run_to_end(job: Job, node: str, outcome: Outcome) -> Job:
    attempt = job.attempt
    job = t.assign(job, node, 1.0) or job
    job = t.start(job, node, attempt, 2.0) or job
    result = t.finish(job, node, attempt, outcome, Tail("tail"), NO_WAIT)
    assert result is not None
    return result


def test_success_path() -> None:
    job = run_to_end(new_job(), "n1", Outcome(2.0, 3.0, exit_code=0))
    assert job.state == JobState.SUCCEEDED and job.exit_code == 0
    assert job.attempts[0].state == "SUCCEEDED" and job.attempts[0].ended_at == 3.0


def test_failure_retries_with_growing_backoff_then_fails() -> None:
    job = new_job(retries=2)
    job = run_to_end(job, "n1", Outcome(2.0, 3.0, exit_code=1))
    assert job.state == JobState.PENDING and job.attempt == 2
    assert 3.0 + 1.0 <= job.not_before <= 3.0 + 1.25
    job = run_to_end(job, "n2", Outcome(5.0, 6.0, exit_code=1))
    assert job.state == JobState.PENDING and job.attempt == 3
    assert 6.0 + 2.0 <= job.not_before <= 6.0 + 2.5
    job = run_to_end(job, "n1", Outcome(9.0, 10.0, exit_code=1))
    assert job.state == JobState.FAILED and job.reason == "exit code 1"
    assert [a.n for a in job.attempts] == [1, 2, 3]


def test_timeout_and_signal_reasons() -> None:
    job = run_to_end(new_job(timeout=1), "n1", Outcome(0, 1, signal=15, timed_out=True))
    assert job.state == JobState.TIMED_OUT and job.reason == "timed out after 1s"
    job = run_to_end(new_job(), "n1", Outcome(0, 1, signal=9))
    assert job.state == JobState.FAILED and job.reason == "killed by SIGKILL"


def test_worker_fence_rejects_other_node_and_old_attempt() -> None:
    job = t.assign(new_job(), "n1", 1.0)
    assert job is not None
    assert t.start(job, "n2", 1, 2.0) is None
    assert t.start(job, "n1", 2, 2.0) is None
    started = t.start(job, "n1", 1, 2.0)
    assert started is not None
    assert t.finish(started, "n2", 1, Outcome(0, 1, exit_code=0), Tail(), NO_WAIT) is None


def test_cancel_pending_assigned_and_running() -> None:
    pending = t.cancel(new_job(), 1.0)
    assert pending is not None and pending.state == JobState.CANCELED
    assigned = t.assign(new_job(), "n1", 1.0)
    assert assigned is not None
    canceled = t.cancel(assigned, 2.0)
    assert canceled is not None and canceled.state == JobState.CANCELED
    assert canceled.attempts[0].reason == "canceled before it started"
    running = t.start(t.assign(new_job(), "n1", 1.0) or new_job(), "n1", 1, 2.0)
    assert running is not None
    flagged = t.cancel(running, 3.0)
    assert flagged is not None and flagged.state == JobState.RUNNING and flagged.cancel_requested
    assert t.cancel(flagged, 4.0) is None


def test_node_lost_retries_or_fails() -> None:
    job = t.start(t.assign(new_job(retries=1), "n1", 1.0) or new_job(), "n1", 1, 2.0)
    assert job is not None
    lost = t.lose(job, "n1", "node lost", NO_WAIT, 5.0)
    assert lost is not None and lost.state == JobState.PENDING and lost.attempt == 2
    again = t.start(t.assign(lost, "n2", 6.0) or lost, "n2", 2, 7.0)
    assert again is not None
    final = t.lose(again, "n2", "node lost", NO_WAIT, 8.0)
    assert final is not None and final.state == JobState.FAILED and final.reason == "node lost"


def test_node_lost_before_the_attempt_started_does_not_use_a_retry() -> None:
    # The agent stopped (or died) with the dispatch still queued: nothing ran.
    job = t.assign(new_job(retries=0), "n1", 1.0)
    assert job is not None
    back = t.lose(job, "n1", "node lost", NO_WAIT, 5.0)
    assert back is not None and back.state == JobState.PENDING and back.attempt == 2
    assert back.node is None and back.not_before == 5.0 and t.failures(back) == 0
    assert back.attempts[0].state == t.HANDED_BACK
    assert back.attempts[0].reason == "node lost before the attempt started"
    assert t.start(back, "n1", 1, 6.0) is None  # the stale dispatch can no longer start it


def test_hand_back_does_not_use_a_retry() -> None:
    job = t.start(t.assign(new_job(), "n1", 1.0) or new_job(), "n1", 1, 2.0)
    assert job is not None
    back = t.hand_back(job, "n1", 1, "agent stopped", 3.0)
    assert back is not None and back.state == JobState.PENDING and back.attempt == 2
    assert t.failures(back) == 0
    assert back.attempts[0].state == t.HANDED_BACK


def test_record_round_trips_through_json() -> None:
    job = run_to_end(new_job(env={"A": "1"}, labels={"z": "y"}), "n1", Outcome(0, 1, exit_code=0))
    again = Job.from_json(job.to_json())
    assert again == job
    assert isinstance(again.spec, JobSpec)


def running_job(retries: int = 1) -> Job:
    job = t.start(t.assign(new_job(retries=retries), "n1", 1.0) or new_job(), "n1", 1, 2.0, 7)
    assert job is not None
    return job


def test_signals_without_a_python_name_are_named_by_number() -> None:
    assert t.signal_name(15) == "SIGTERM"
    assert t.signal_name(int(signal.SIGRTMIN) + 1) == "SIGRTMIN+1"
    assert t.signal_name(int(signal.SIGRTMIN)) == "SIGRTMIN"
    assert t.signal_name(200) == "signal 200"
    job = run_to_end(new_job(), "n1", Outcome(0, 1, signal=int(signal.SIGRTMIN) + 1))
    assert (job.state, job.reason) == (JobState.FAILED, "killed by SIGRTMIN+1")


def test_a_cancel_holds_on_every_path_that_would_run_the_job_again() -> None:
    failed = t.cancel(running_job(), 3.0)
    assert failed is not None
    failed = t.finish(failed, "n1", 1, Outcome(2.0, 4.0, exit_code=1), Tail(), NO_WAIT)
    assert failed is not None and (failed.state, failed.reason) == (JobState.CANCELED, "canceled")
    assert failed.attempts[0].reason == "exit code 1" and failed.attempt == 1

    lost = t.lose(t.cancel(running_job(), 3.0) or new_job(), "n1", "node lost", NO_WAIT, 5.0)
    assert lost is not None and lost.state == JobState.CANCELED
    assert lost.attempts[0].reason == "node lost"

    back = t.hand_back(t.cancel(running_job(), 3.0) or new_job(), "n1", 1, "agent stopped", 5.0)
    assert back is not None and back.state == JobState.CANCELED
    assert back.attempts[0].state == t.HANDED_BACK

    queued = new_job()
    queued.cancel_requested = True  # as a record from before cancels held everywhere
    assert t.assign(queued.clone(), "n1", 1.0) is None
    settled = t.settle_cancel(queued)
    assert settled is not None and settled.state == JobState.CANCELED
    assert t.settle_cancel(new_job()) is None


def test_an_attempt_not_taken_up_goes_back_after_enough_dispatches() -> None:
    job = t.assign(new_job(), "n1", 1.0)
    assert job is not None
    assert t.stalled(job.clone(), t.DISPATCHES_BEFORE_HAND_BACK - 1, 5.0) is None
    back = t.stalled(job, t.DISPATCHES_BEFORE_HAND_BACK, 5.0)
    assert back is not None and (back.state, back.attempt, t.failures(back)) == (
        JobState.PENDING,
        2,
        0,
    )
    assert back.attempts[0].reason == "not taken up by its node after 3 dispatches"
    assert t.stalled(running_job(), 10, 5.0) is None


def test_the_reconcilers_verdicts_on_a_running_record_it_does_not_run() -> None:
    never = t.orphaned(running_job(), "n1", 7, False, NO_WAIT, 5.0)
    assert never is not None and (never.state, t.failures(never)) == (JobState.PENDING, 0)
    assert never.attempts[0].reason == t.NEVER_STARTED
    lost = t.orphaned(running_job(), "n1", 7, True, NO_WAIT, 5.0)
    assert lost is not None and lost.attempts[0].reason == t.LOST_TRACK and t.failures(lost) == 1
    other = t.orphaned(running_job(), "n1", 8, False, NO_WAIT, 5.0)
    assert other is not None and other.attempts[0].reason == t.AGENT_RESTARTED
    assert t.orphaned(running_job(), "n2", 7, False, NO_WAIT, 5.0) is None
    # Started under an earlier lease of this same process (it lost it, and took a new
    # one): its lease was lost, no agent restarted.
    mine = t.orphaned(running_job(), "n1", 8, False, NO_WAIT, 5.0, earlier_leases={7, 8})
    assert mine is not None and mine.attempts[0].reason == t.LEASE_LOST


def test_a_backoff_is_measured_on_the_clock_of_who_waits() -> None:
    job = run_to_end(new_job(retries=1), "n1", Outcome(2.0, 3.0, exit_code=1))
    job.updated_at = 3.0  # as JobStore.write stamps it, on the worker's clock
    delay = job.not_before - 3.0
    # A leader whose clock is an hour behind the worker's waits the backoff, not an hour.
    assert t.eligible_at(job, 100.0 - 3600) == 100.0 - 3600 + delay
    # A new leader seeing a retry whose backoff is over waits no second backoff.
    assert t.eligible_at(job, 1000.0) == job.not_before
    fresh = new_job()
    fresh.updated_at = 50.0
    assert t.eligible_at(fresh, 10.0) <= 10.0
