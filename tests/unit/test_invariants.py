"""The invariant checker finds each kind of violation and passes a clean record."""

from __future__ import annotations

from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.dev.invariants import check_job, check_jobs


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
