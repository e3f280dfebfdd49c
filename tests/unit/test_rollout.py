"""The roll-out decision (core/rollout.py): budget, canary, batches, shares, offline hosts."""

from __future__ import annotations

from schedagent.core.fleet import Policy, Target
from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.core.rollout import Part, Result, Situation, counts, plan, result_of, summary

NOW = 1000.0
HOSTS = [f"h{i}" for i in range(1, 7)]


def situation(
    policy: Policy,
    parts: dict[str, Result] | None = None,
    offline: tuple[str, ...] = (),
    ended: dict[str, float] | None = None,
    accepted_at: float = NOW,
    canceled: bool = False,
) -> Situation:
    targets = [Target(h, h not in offline) for h in HOSTS]
    ended = ended or {}
    views = {h: Part(r, ended.get(h)) for h, r in (parts or {}).items()}
    online = {h for h in HOSTS if h not in offline}
    return Situation(policy, targets, views, online, NOW, accepted_at, canceled)


def test_no_limit_starts_every_host_at_once() -> None:
    step = plan(situation(Policy()))
    assert step.start == HOSTS and not step.skip and not step.done


def test_max_parallel_starts_that_many_in_target_order() -> None:
    step = plan(situation(Policy(max_parallel=2)))
    assert step.start == ["h1", "h2"]


def test_a_running_part_holds_its_slot() -> None:
    parts = {"h1": Result.SUCCEEDED, "h2": Result.RUNNING}
    assert plan(situation(Policy(max_parallel=2), parts)).start == ["h3"]


def test_max_parallel_as_a_share_rounds_up() -> None:
    # 34% of 6 hosts is 2.04: 3 at once.
    assert len(plan(situation(Policy(max_parallel="34%"))).start) == 3
    assert len(plan(situation(Policy(max_parallel="1%"))).start) == 1


def test_budget_zero_by_default_with_max_parallel_stops_after_one_failure() -> None:
    parts = {"h1": Result.SUCCEEDED, "h2": Result.FAILED}
    step = plan(situation(Policy(max_parallel=1), parts))
    assert step.start == []
    assert set(step.skip) == {"h3", "h4", "h5", "h6"}
    assert all("failure budget" in reason for reason in step.skip.values())


def test_no_budget_without_max_parallel_goes_on_after_failures() -> None:
    parts = {"h1": Result.FAILED, "h2": Result.FAILED}
    step = plan(situation(Policy(), parts))
    assert step.start == ["h3", "h4", "h5", "h6"] and not step.skip


def test_budget_allows_that_many_failures_then_stops() -> None:
    policy = Policy(max_parallel=1, max_failures=1)
    assert plan(situation(policy, {"h1": Result.FAILED})).start == ["h2"]
    both = plan(situation(policy, {"h1": Result.FAILED, "h2": Result.FAILED}))
    assert both.start == [] and len(both.skip) == 4


def test_budget_as_a_share_rounds_down() -> None:
    # 50% of 6 = 3 failures allowed: a fourth stops the roll-out.
    policy = Policy(max_parallel=1, max_failures="50%")
    three = {h: Result.FAILED for h in HOSTS[:3]}
    assert plan(situation(policy, three)).start == ["h4"]
    four = {h: Result.FAILED for h in HOSTS[:4]}
    assert plan(situation(policy, four)).start == []


def test_a_stopped_roll_out_lets_live_parts_finish_and_is_not_done_until_they_do() -> None:
    parts = {"h1": Result.FAILED, "h2": Result.RUNNING}
    step = plan(situation(Policy(max_parallel=2), parts))
    assert step.start == [] and not step.cancel and not step.done


def test_operator_canceled_parts_count_against_the_budget() -> None:
    step = plan(situation(Policy(max_parallel=1), {"h1": Result.CANCELED}))
    assert step.start == [] and len(step.skip) == 5


def test_canary_runs_alone_first() -> None:
    step = plan(situation(Policy(canary=2)))
    assert step.start == ["h1", "h2"]
    half = {"h1": Result.SUCCEEDED, "h2": Result.RUNNING}
    assert plan(situation(Policy(canary=2), half)).start == []


def test_canary_that_failed_skips_everything_else() -> None:
    step = plan(situation(Policy(canary=1), {"h1": Result.FAILED}))
    assert step.start == [] and set(step.skip) == set(HOSTS[1:])
    assert "canary h1" in step.skip["h2"]


def test_canary_that_succeeded_lets_the_rest_start() -> None:
    step = plan(situation(Policy(canary=1), {"h1": Result.SUCCEEDED}))
    assert step.start == HOSTS[1:]


def test_canary_unreachable_is_not_a_success() -> None:
    step = plan(situation(Policy(canary=1), {"h1": Result.UNREACHABLE}))
    assert step.start == [] and len(step.skip) == 5


def test_batch_wait_holds_a_freed_slot_until_it_has_passed() -> None:
    policy = Policy(max_parallel=1, batch_wait=30.0)
    cooling = situation(policy, {"h1": Result.SUCCEEDED}, ended={"h1": NOW - 10})
    step = plan(cooling)
    assert step.start == [] and step.wake_at == NOW + 20
    cooled = situation(policy, {"h1": Result.SUCCEEDED}, ended={"h1": NOW - 31})
    assert plan(cooled).start == ["h2"]


def test_offline_at_acceptance_is_unreachable_at_once_without_offline_wait() -> None:
    step = plan(situation(Policy(), offline=("h3",)))
    assert "h3" not in step.start and step.unreachable["h3"].startswith("unreachable:")


def test_offline_wait_lets_the_others_go_first_and_wakes_at_its_end() -> None:
    step = plan(situation(Policy(offline_wait=60.0), offline=("h3",)))
    assert "h3" not in step.start and "h3" not in step.unreachable
    assert step.wake_at == NOW + 60.0
    late = plan(situation(Policy(offline_wait=60.0), offline=("h3",), accepted_at=NOW - 61))
    assert "h3" in late.unreachable


def test_unreachable_hosts_do_not_use_the_failure_budget() -> None:
    step = plan(situation(Policy(max_parallel=1), {"h1": Result.UNREACHABLE}))
    assert step.start == ["h2"]


def test_a_queued_part_whose_host_left_becomes_unreachable_after_the_wait() -> None:
    step = plan(situation(Policy(), {"h2": Result.PENDING}, offline=("h2",)))
    assert "h2" in step.unreachable


def test_cancel_skips_what_has_not_started_and_cancels_live_parts() -> None:
    parts = {"h1": Result.SUCCEEDED, "h2": Result.RUNNING}
    step = plan(situation(Policy(max_parallel=2), parts, canceled=True))
    assert step.cancel == ["h2"] and set(step.skip) == set(HOSTS[2:]) and not step.start


def test_done_once_every_target_has_a_final_result() -> None:
    final = {h: Result.SUCCEEDED for h in HOSTS}
    assert plan(situation(Policy(), final)).done
    assert not plan(situation(Policy(), {**final, "h6": Result.RUNNING})).done


def test_result_of_a_job_reads_its_state_and_the_leader_reasons() -> None:
    job = Job(id="0" * 20, spec=JobSpec(cmd="x"), state=JobState.CANCELED, submitted_at=0.0)
    assert result_of(None) is Result.WAITING
    job.reason = "unreachable: h1 offline"
    assert result_of(job) is Result.UNREACHABLE
    job.reason = "skipped: canary"
    assert result_of(job) is Result.SKIPPED
    job.reason = "canceled"
    assert result_of(job) is Result.CANCELED
    job.state = JobState.TIMED_OUT
    assert result_of(job) is Result.FAILED
    job.state = JobState.ASSIGNED
    job.attempts = [Attempt(n=1, node="h1", assigned_at=0.0)]
    assert result_of(job) is Result.RUNNING


def test_counts_and_summary() -> None:
    parts = {"h1": Result.SUCCEEDED, "h2": Result.FAILED, "h3": Result.UNREACHABLE}
    parts.update({"h4": Result.SKIPPED, "h5": Result.SKIPPED, "h6": Result.SUCCEEDED})
    found = counts(situation(Policy(), parts))
    assert summary(found) == "2 succeeded, 1 failed, 1 unreachable, 2 skipped"
