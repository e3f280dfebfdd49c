"""The agent's Prometheus metrics: one registry per agent, updated where things happen.

Labels stay bounded: no job ids, node names only as the scrape target's own, reasons
bucketed (core/reasons.py). Updates are a counter bump or a histogram observe (about
a microsecond each): a few per job, never a scan. Figures that are state (running jobs,
the lease's age, the leader's queue) are read when scraped, on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from schedagent.core.model import JobState
from schedagent.core.reasons import reason_class

# Seconds: spawns take milliseconds, jobs anything from that to hours.
ATTEMPT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
PLACEMENT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800)
SEEDED_ENDS = (
    (JobState.SUCCEEDED, "exit_code"),
    (JobState.FAILED, "exit_code"),
    (JobState.FAILED, "signal"),
    (JobState.TIMED_OUT, "timeout"),
    (JobState.CANCELED, "canceled"),
)


# The library leaves this one function unannotated; it takes nothing and returns None.
_disable_created_series = cast(Callable[[], None], disable_created_metrics)


class AgentMetrics:
    """Every metric an agent exports, in its own registry (tests make as many as they like)."""

    def __init__(self) -> None:
        # No `_created` series beside each counter and histogram: they double the
        # series and no query here needs them (a process-wide switch of the library).
        _disable_created_series()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # the agent's own CPU, memory, open files
        self.jobs_started = Counter(
            "schedagent_jobs_started", "Attempts this agent started.", registry=r
        )
        self.jobs_finished = Counter(
            "schedagent_jobs_finished",
            "Attempts that ended on this agent, by how (state) and why (reason class).",
            ["state", "reason"],
            registry=r,
        )
        # The series in use; the common ones at 0 from the start, so rate() sees the first.
        self._ends: dict[tuple[str, str], Counter] = {
            (str(state), reason): self.jobs_finished.labels(state, reason)
            for state, reason in SEEDED_ENDS
        }
        self.jobs_refused = Counter(
            "schedagent_jobs_refused", "Dispatches this agent refused to run.", registry=r
        )
        self.attempt_duration = Histogram(
            "schedagent_attempt_duration_seconds",
            "How long attempts ran, from start to end.",
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.spawn_latency = Histogram(
            "schedagent_spawn_latency_seconds",
            "From a dispatch taken to its command's process running (RUNNING write included).",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.output_bytes = Counter(
            "schedagent_output_bytes", "Bytes of job output read from jobs.", registry=r
        )
        self._add_round_trips(r)
        self._add_cluster(r)

    def _add_round_trips(self, r: CollectorRegistry) -> None:
        self.etcd_latency = Histogram(
            "schedagent_etcd_request_duration_seconds",
            "etcd requests (reads, transactions, lease calls), answered or not.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.etcd_errors = Counter(
            "schedagent_etcd_request_errors", "etcd requests that failed.", registry=r
        )
        self.nats_latency = Histogram(
            "schedagent_nats_request_duration_seconds",
            "NATS JetStream publishes (dispatches), until the stream's ack.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.nats_errors = Counter(
            "schedagent_nats_errors",
            "NATS publishes that failed: acked (JetStream) or fire-and-forget (core).",
            ["kind"],
            registry=r,
        )

    def _add_cluster(self, r: CollectorRegistry) -> None:
        # Counted by whichever agent leads; the sum over agents is the cluster's.
        self.placements = Counter(
            "schedagent_placements", "Jobs placed on a node by this agent as leader.", registry=r
        )
        self.placement_latency = Histogram(
            "schedagent_placement_latency_seconds",
            "From a job becoming placeable to its placement written.",
            buckets=PLACEMENT_BUCKETS,
            registry=r,
        )
        self.leaderships = Counter(
            "schedagent_leadership_acquired",
            "Times this agent became leader (the sum over agents counts leader changes).",
            registry=r,
        )
        self.nodes_lost = Counter(
            "schedagent_nodes_lost",
            "Node records that vanished (lease expired) while this agent led.",
            registry=r,
        )
        self.schedule_slots = Counter(
            "schedagent_schedule_slots",
            "Schedule slots handled by this agent as leader: fired or skipped.",
            ["outcome"],
            registry=r,
        )
        for outcome in ("fired", "skipped"):
            self.schedule_slots.labels(outcome)

    def attempt_ended(self, state: str, reason: str | None, seconds: float) -> None:
        labels = (state, reason_class(state, reason))
        child = self._ends.get(labels)
        if child is None:  # labels() costs more than the increment: once per pair
            child = self._ends[labels] = self.jobs_finished.labels(*labels)
        child.inc()
        self.attempt_duration.observe(seconds)

    def etcd_call(self, seconds: float, failed: bool) -> None:
        self.etcd_latency.observe(seconds)
        if failed:
            self.etcd_errors.inc()

    def nats_round_trip(self, seconds: float, failed: bool) -> None:
        self.nats_latency.observe(seconds)
        if failed:
            self.nats_errors.labels("jetstream").inc()

    def nats_publish_failed(self) -> None:
        self.nats_errors.labels("core").inc()

    def watch_agent(
        self,
        usage: Callable[[], tuple[float, int]],
        lease_age: Callable[[], float | None],
        ttl: float,
        leading: Callable[[], bool],
    ) -> None:
        """Figures read at scrape time from the agent's parts."""
        r = self.registry
        Gauge("schedagent_running_jobs", "Attempts running here.", registry=r).set_function(
            lambda: usage()[1]
        )
        Gauge("schedagent_cpus_in_use", "CPUs the running attempts hold.", registry=r).set_function(
            lambda: usage()[0]
        )
        Gauge(
            "schedagent_lease_refresh_age_seconds",
            "Seconds since the last etcd lease refresh that worked (-1: none yet).",
            registry=r,
        ).set_function(lambda: _or_minus_one(lease_age()))
        Gauge("schedagent_lease_ttl_seconds", "The agent's lease TTL.", registry=r).set(ttl)
        Gauge("schedagent_is_leader", "1 while this agent leads.", registry=r).set_function(
            lambda: float(leading())
        )


def _or_minus_one(value: float | None) -> float:
    return -1.0 if value is None else value
