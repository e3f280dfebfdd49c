"""The cluster's figures, from the leader's view: read at scrape time, only where one leads.

Only the leading agent yields these series, so a query over all agents (sum, max)
counts each job and node once. A scrape walks the view's jobs once (a few ms per
10,000 jobs that are not final); the scheduler itself pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from schedagent.core.leaderview import LeaderView
from schedagent.core.model import JobState

NODE_STATES = ("ready", "draining", "suspect")


class LeaderCollector(Collector):
    """Yields the leader's view while `view` is set (the scheduler sets and clears it)."""

    def __init__(self) -> None:
        self.view: LeaderView | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Named up front so the registry checks for clashes without collecting.
        yield from _families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self.view
        if view is None:
            return
        pending, nodes, oldest = _families()
        count, since = pending_figures(view)
        pending.add_metric([], count)
        oldest.add_metric([], 0.0 if since is None else max(0.0, time.time() - since))
        for state, number in node_states(view).items():
            nodes.add_metric([state], number)
        yield from (pending, nodes, oldest)


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            "schedagent_pending_jobs", "Jobs waiting for a node (leader only), held or not."
        ),
        GaugeMetricFamily(
            "schedagent_nodes", "Registered nodes by state (leader only).", labels=["state"]
        ),
        GaugeMetricFamily(
            "schedagent_oldest_pending_age_seconds",
            "Seconds the oldest job waiting for a node has been placeable (leader only; 0: none).",
        ),
    )


def pending_figures(view: LeaderView) -> tuple[int, float | None]:
    """How many jobs are PENDING, and since when the oldest of those waiting for a node
    (queued: not in backoff, not held by --after) has been placeable (None: none)."""
    count = sum(1 for tracked in view.jobs.values() if tracked.job.state == JobState.PENDING)
    oldest = None
    for key in view.queue.members:
        job = view.jobs[key].job
        since = max(job.updated_at, job.not_before)
        if oldest is None or since < oldest:
            oldest = since
    return count, oldest


def node_states(view: LeaderView) -> dict[str, int]:
    counts = dict.fromkeys(NODE_STATES, 0)
    for name, record in view.records.items():
        if record.draining:
            counts["draining"] += 1
        elif name in view.suspect:
            counts["suspect"] += 1
        else:
            counts["ready"] += 1
    return counts
