"""The agent's metrics: reasons bucketed, updates counted, the leader's figures, /metrics served."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schedagent.core import transitions
from schedagent.core.leaderview import LeaderView
from schedagent.core.model import Job, JobSpec, JobState, NodeRecord, Outcome
from schedagent.core.reasons import HANDED_BACK, INTERRUPTED, REASON_CLASSES, reason_class
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.metrics_cluster import LeaderCollector
from schedagent.daemon.metrics_http import MetricsServer
from schedagent.errors import ListenError


@pytest.mark.parametrize(
    ("outcome", "timeout", "expected"),
    [
        (Outcome(0, 1, exit_code=0), None, ("SUCCEEDED", "exit_code")),
        (Outcome(0, 1, exit_code=3), None, ("FAILED", "exit_code")),
        (Outcome(0, 1, signal=9), None, ("FAILED", "signal")),
        (Outcome(0, 1, timed_out=True, signal=15), 1.0, ("TIMED_OUT", "timeout")),
        (Outcome(0, 1, canceled=True, signal=15), None, ("CANCELED", "canceled")),
        (
            Outcome(0, 1, signal=9, error="out of memory (limit 64M)"),
            None,
            ("FAILED", "out_of_memory"),
        ),
        (
            Outcome(0, 1, error="the worker failed running it: X()"),
            None,
            ("FAILED", "worker_error"),
        ),
    ],
)
def test_each_real_reason_falls_in_its_class(
    outcome: Outcome, timeout: float | None, expected: tuple[str, str]
) -> None:
    # The reasons as transitions writes them, not strings made up for the test.
    state, reason = transitions.outcome_state(outcome, timeout)
    assert (str(state), reason_class(state, reason)) == expected


def test_ends_the_agent_caused_and_unknown_reasons_stay_in_the_fixed_set() -> None:
    assert reason_class(HANDED_BACK, "agent stopped") == "agent_stopped"
    assert reason_class(INTERRUPTED, "agent lost its etcd lease") == "lease_lost"
    assert reason_class("FAILED", "cannot start: no such user") == "cannot_start"
    assert reason_class("FAILED", "job 0123abcd: something new") == "other"
    assert reason_class("FAILED", None) == "other"
    assert {"other", "lease_lost", "timeout"} <= set(REASON_CLASSES)


def value(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_attempt_ends_count_by_state_and_class_and_time_their_duration() -> None:
    metrics = AgentMetrics()
    assert value(metrics, "schedagent_jobs_finished_total", state="FAILED", reason="exit_code") == 0
    metrics.attempt_ended("FAILED", "exit code 1", 2.0)
    metrics.attempt_ended("FAILED", "exit code 2", 0.05)
    metrics.attempt_ended("SUCCEEDED", "exit code 0", 0.05)
    assert value(metrics, "schedagent_jobs_finished_total", state="FAILED", reason="exit_code") == 2
    assert (
        value(metrics, "schedagent_jobs_finished_total", state="SUCCEEDED", reason="exit_code") == 1
    )
    assert value(metrics, "schedagent_attempt_duration_seconds_count") == 3
    assert value(metrics, "schedagent_attempt_duration_seconds_bucket", le="0.1") == 2


def test_round_trips_and_their_failures() -> None:
    metrics = AgentMetrics()
    metrics.etcd_call(0.002, False)
    metrics.etcd_call(5.0, True)
    metrics.nats_round_trip(0.001, True)
    metrics.nats_publish_failed()
    assert value(metrics, "schedagent_etcd_request_duration_seconds_count") == 2
    assert value(metrics, "schedagent_etcd_request_errors_total") == 1
    assert value(metrics, "schedagent_nats_request_duration_seconds_count") == 1
    assert value(metrics, "schedagent_nats_errors_total", kind="jetstream") == 1
    assert value(metrics, "schedagent_nats_errors_total", kind="core") == 1


def test_the_agent_figures_are_read_when_scraped() -> None:
    metrics = AgentMetrics()
    state = {"usage": (1.5, 2), "age": None, "leading": False}
    metrics.watch_agent(
        lambda: state["usage"],  # type: ignore[arg-type,return-value]
        lambda: state["age"],  # type: ignore[arg-type,return-value]
        10,
        lambda: bool(state["leading"]),
    )
    assert value(metrics, "schedagent_running_jobs") == 2
    assert value(metrics, "schedagent_cpus_in_use") == 1.5
    assert value(metrics, "schedagent_lease_refresh_age_seconds") == -1
    state.update(usage=(0.0, 0), age=3.5, leading=True)
    assert value(metrics, "schedagent_running_jobs") == 0
    assert value(metrics, "schedagent_lease_refresh_age_seconds") == 3.5
    assert value(metrics, "schedagent_lease_ttl_seconds") == 10
    assert value(metrics, "schedagent_is_leader") == 1


def pending(n: int, submitted_at: float, state: JobState = JobState.PENDING) -> Job:
    job = Job(id=f"{n:020x}", spec=JobSpec(cmd="true"), state=state, submitted_at=submitted_at)
    job.updated_at = submitted_at
    return job


def node(name: str, draining: bool = False) -> NodeRecord:
    return NodeRecord(name, name, 2.0, 1, 0, (0.0, 0.0, 0.0), {}, "t", 1.0, 1, draining=draining)


def test_the_leader_figures_come_from_its_view_and_only_while_it_leads() -> None:
    metrics = AgentMetrics()
    collector = LeaderCollector()
    metrics.registry.register(collector)
    assert value(metrics, "schedagent_pending_jobs") is None  # not leading: no series
    view = LeaderView(10.0, transitions.Backoff(1.0, 10.0))
    view.set_node("nodes/a", node("a"))
    view.set_node("nodes/b", node("b", draining=True))
    view.set_node("nodes/c", node("c"))
    view.set_suspects({"c"})
    now = time.time()
    view.set_job("jobs/1", pending(1, now - 400), 1, now)
    view.set_job("jobs/2", pending(2, now - 10), 1, now)
    view.set_job("jobs/3", pending(3, now - 900, JobState.RUNNING), 1, now)
    backoff = pending(4, now - 3600)  # retried, waiting out its backoff: not for a node
    backoff.not_before = now + 60
    view.set_job("jobs/4", backoff, 1, now)
    collector.view = view
    assert value(metrics, "schedagent_pending_jobs") == 3
    age = value(metrics, "schedagent_oldest_pending_age_seconds")
    assert age is not None and 400 <= age < 430  # jobs/1's, not the older one in backoff
    for state in ("ready", "draining", "suspect"):
        assert value(metrics, "schedagent_nodes", state=state) == 1
    collector.view = None
    assert value(metrics, "schedagent_nodes", state="ready") is None


async def scrape(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_metrics_are_served_on_the_loop_and_other_paths_are_not_found() -> None:
    metrics = AgentMetrics()
    metrics.jobs_started.inc(3)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    try:
        answer = await scrape(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["schedagent_jobs_started"].samples[0].value == 3
        missing = await scrape(server.port, b"GET /other HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        # A client that never finishes its request does not hold up the others, and one
        # that sends too much is cut off.
        _, silent = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            again = await scrape(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert again.startswith(b"HTTP/1.1 200 OK")
            assert await scrape(server.port, b"GET /metrics HTTP/1.1\r\nX: " + b"x" * 9000) == b""
        finally:
            silent.close()
    finally:
        await server.stop()


async def test_an_address_in_use_is_a_clear_error() -> None:
    first = MetricsServer(AgentMetrics().registry, "127.0.0.1", 0)
    await first.start()
    try:
        second = MetricsServer(AgentMetrics().registry, "127.0.0.1", first.port)
        expected = f"metrics.listen 127.0.0.1:{first.port}: cannot listen: Address already in use$"
        with pytest.raises(ListenError, match=expected):
            await second.start()
    finally:
        await first.stop()
