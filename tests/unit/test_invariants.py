"""The invariant checker finds each kind of violation and passes a clean record."""

from __future__ import annotations

from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.dev.invariants import (
    Snapshot,
    check_cancels,
    check_executions,
    check_job,
    check_jobs,
    check_running_have_processes,
)
from schedagent.dev.marks import PAD, Mark


def job(state: JobState, attempts: list[Attempt], retries: int = 0) -> Job:
    return Job(
        id="1" * 20,
        spec=JobSpec(cmd="x", retries=retries),
        state=state,
        submitted_at=0,
        attempts=attempts,
    )


def attempt(
    n: int, node: str, start: float | None, end: float | None, state: str = "FAILED"
) -> Attempt:
    return Attempt(
        n=n, node=node, assigned_at=0, started_at=start, ended_at=end, state=state, reason="r"
    )


def test_clean_record_passes() -> None:
    ok = job(
        JobState.SUCCEEDED, [attempt(1, "a", 1, 2), attempt(2, "b", 3, 4, "SUCCEEDED")], retries=1
    )
    assert check_job(ok) == []


def test_each_violation_is_found() -> None:
    assert check_job(job(JobState.RUNNING, [attempt(1, "a", 1, None)])) == ["not final: RUNNING"]
    assert check_job(job(JobState.FAILED, [attempt(1, "a", 1, 2), attempt(2, "a", 3, 4)])) == [
        "2 attempts for retries=0"
    ]
    overlapping = job(JobState.FAILED, [attempt(1, "a", 1, 5), attempt(2, "b", 3, 6)], retries=1)
    assert check_job(overlapping) == ["attempts 1 on a and 2 on b overlap"]
    unended = job(JobState.FAILED, [attempt(1, "a", 1, None)])
    assert check_job(unended) == ["attempt 1 never ended"]
    no_reason = job(
        JobState.FAILED, [Attempt(n=1, node="a", assigned_at=0, started_at=1, ended_at=2)]
    )
    assert check_job(no_reason) == ["attempt 1 ended without a state and reason"]


def test_hand_back_does_not_count_as_a_retry() -> None:
    handed = attempt(1, "a", 1, 2, state="handed back")
    assert check_job(job(JobState.SUCCEEDED, [handed, attempt(2, "b", 3, 4, "SUCCEEDED")])) == []


def test_missing_accepted_job() -> None:
    assert check_jobs(["2" * 20], {}) == [f"{'2' * 20}: accepted but has no record"]


JOB = "1" * 20


def run(attempt: int, start: float, last: float, ended: bool = True) -> list[Mark]:
    """The marks of one run: its start, and its end (or, if killed, its last beat)."""
    return [
        Mark("start", JOB, attempt, start, "h"),
        Mark("end" if ended else "beat", JOB, attempt, last, "h"),
    ]


def test_executions_that_agree_with_the_records_pass() -> None:
    record = job(JobState.SUCCEEDED, [attempt(1, "a", 1, 2), attempt(2, "b", 3, 4, "SUCCEEDED")], 1)
    assert check_executions(run(1, 1.1, 1.9) + run(2, 3.1, 3.9), {JOB: record}) == []


def test_executions_the_records_do_not_explain_are_found() -> None:
    record = job(JobState.SUCCEEDED, [attempt(1, "a", 1, 2), attempt(2, "b", 3, 4, "SUCCEEDED")], 1)
    overlapping = run(1, 1.1, 3.5, ended=False) + run(2, 3.1, 3.9)
    assert check_executions(overlapping, {JOB: record}) == [
        f"{JOB}: attempt 1 on h (until {3.5 + PAD:.2f}) and attempt 2 on h (from 3.10) overlap"
    ]
    unrecorded = run(1, 1.1, 1.9) + run(2, 3.1, 3.9) + run(3, 5, 6)
    assert check_executions(unrecorded, {JOB: record}) == [
        f"{JOB}: attempt 3 ran, but the record shows no start of it"
    ]
    twice = [*run(1, 1.1, 1.9), Mark("start", JOB, 1, 1.5, "h"), *run(2, 3.1, 3.9)]
    assert check_executions(twice, {JOB: record}) == [f"{JOB}: attempt 1 ran 2 times"]
    assert check_executions(run(2, 3.1, 3.9), {JOB: record}) == [
        f"{JOB}: attempt 1 recorded started and ended FAILED (r), but it never ran"
    ]


def test_an_attempt_the_agent_ended_may_not_have_run() -> None:
    lost = Attempt(n=1, node="a", assigned_at=0, started_at=1, ended_at=2, state="FAILED")
    lost.reason = "node lost"
    record = job(JobState.SUCCEEDED, [lost, attempt(2, "b", 3, 4, "SUCCEEDED")], 1)
    assert check_executions(run(2, 3.1, 3.9), {JOB: record}) == []


def test_no_job_runs_after_its_cancel() -> None:
    record = job(JobState.CANCELED, [attempt(1, "a", 1, 2), attempt(2, "b", 3, 4, "CANCELED")], 1)
    assert check_cancels(run(2, 3.1, 3.9), {JOB: 2.5}, {JOB: record}, grace=1) == [
        f"{JOB}: attempt 2 started 0.60s after its cancel"
    ]
    lingering = run(1, 1.1, 4.0, ended=False)  # killed: alive up to a beat past its last mark
    assert check_cancels(lingering, {JOB: 1.5}, {JOB: record}, grace=1) == [
        f"{JOB}: attempt 1 still ran {4.0 + PAD - 1.5:.2f}s after its cancel (grace 1s)"
    ]
    # Recorded RUNNING before the cancel, its command started a moment after: killed.
    assert check_cancels(run(1, 1.6, 1.8), {JOB: 1.5}, {JOB: record}, 1) == []


def test_a_running_record_with_no_process_for_longer_than_grace_is_found() -> None:
    def snap(at: float, processes: frozenset[tuple[str, int]] = frozenset()) -> Snapshot:
        return Snapshot(at, {JOB: (1, 10.0)}, processes)

    alive = frozenset({(JOB, 1)})
    assert check_running_have_processes([snap(0, alive), snap(5, alive), snap(9, alive)], 3) == []
    # Gone for one look only (it ended between the read and the scan): not a phantom.
    assert check_running_have_processes([snap(0, alive), snap(2), snap(4, alive)], 3) == []
    assert check_running_have_processes([snap(0, alive), snap(2), snap(4), snap(6)], 3) == [
        f"{JOB}: attempt 1 recorded RUNNING with no process for 4.0s"
    ]
    # A record that changed (its updated_at) is a new version: the clock starts again.
    moved = Snapshot(4, {JOB: (1, 11.0)}, frozenset())
    assert check_running_have_processes([snap(0), snap(2), moved, snap(6)], 3) == []
