"""Real agents' /metrics move with real jobs: what ran (the jobs' own marks) is what is counted."""

from __future__ import annotations

import asyncio
import http.client
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apiclient import ApiClient
from conftest import ClusterFactory
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.procs import HarnessError

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def fleet(cluster: LocalCluster) -> Samples:
    """Every agent's samples summed over the agents (a query's sum())."""
    total: dict[tuple[str, frozenset[tuple[str, str]]], float] = defaultdict(float)
    for agent in cluster.agents.values():
        assert agent.metrics_url is not None
        for key, value in (await asyncio.to_thread(scrape, agent.metrics_url)).items():
            total[key] += value
    return total


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(check: Callable[[Samples], bool], cluster: LocalCluster, what: str) -> Samples:
    end = time.monotonic() + 30
    while True:
        samples = await fleet(cluster)
        if check(samples):
            return samples
        if time.monotonic() > end:
            raise AssertionError(f"metrics never showed {what}")
        await asyncio.sleep(0.2)


def finished(samples: Samples, state: str, reason: str) -> float:
    return get(samples, "schedagent_jobs_finished_total", state=state, reason=reason)


async def test_counters_move_with_the_jobs_that_ran(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = await asyncio.to_thread(cluster_factory, 2)
    before = await until(
        lambda s: get(s, "schedagent_is_leader") == 1, cluster, "one leader among the agents"
    )
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        ok = [await api.submit(marks.marked("echo hello", ran)) for _ in range(5)]
        bad = await api.submit(marks.marked("exit 3", ran))
        jobs = await api.wait_all([*ok, bad], deadline=60)
    assert [jobs[j]["state"] for j in ok] == ["SUCCEEDED"] * 5
    assert jobs[bad]["state"] == "FAILED"
    runs = marks.runs(marks.read_file(ran))
    assert len(runs) == 6  # the evidence: each job's shell marked its one run

    def rise(now: Samples, state: str) -> float:
        return finished(now, state, "exit_code") - finished(before, state, "exit_code")

    def counted(now: Samples) -> bool:
        return rise(now, "SUCCEEDED") >= 5 and rise(now, "FAILED") >= 1

    after = await until(counted, cluster, "the six attempt ends")
    delta = {
        name: get(after, name) - get(before, name)
        for name in (
            "schedagent_jobs_started_total",
            "schedagent_attempt_duration_seconds_count",
            "schedagent_spawn_latency_seconds_count",
            "schedagent_placements_total",
            "schedagent_placement_latency_seconds_count",
            "schedagent_output_bytes_total",
        )
    }
    assert delta == {
        "schedagent_jobs_started_total": len(runs),
        "schedagent_attempt_duration_seconds_count": len(runs),
        "schedagent_spawn_latency_seconds_count": len(runs),
        "schedagent_placements_total": len(runs),
        "schedagent_placement_latency_seconds_count": len(runs),
        "schedagent_output_bytes_total": 5 * len(b"hello\n"),
    }
    assert (rise(after, "SUCCEEDED"), rise(after, "FAILED")) == (5, 1)
    # State read at scrape time: nothing runs or waits now; both nodes are up, one leads.
    assert get(after, "schedagent_running_jobs") == 0
    assert get(after, "schedagent_pending_jobs") == 0
    assert get(after, "schedagent_nodes", state="ready") == 2
    assert get(after, "schedagent_is_leader") == 1
    assert get(after, "schedagent_etcd_request_duration_seconds_count") > 0
    assert get(after, "schedagent_etcd_request_errors_total") == 0
    for agent in cluster.agents.values():
        assert agent.metrics_url is not None
        own = await asyncio.to_thread(scrape, agent.metrics_url)
        assert 0 <= get(own, "schedagent_lease_refresh_age_seconds") < 10


async def test_metrics_off_and_a_port_in_use(cluster_factory: ClusterFactory) -> None:
    cluster = await asyncio.to_thread(cluster_factory, ["n1"])
    taken = cluster.agents["n1"].config["metrics"]["listen"]
    with pytest.raises(HarnessError, match="n2 exited with code 2"):
        await asyncio.to_thread(cluster.add_agent, "n2", metrics={"listen": taken})
    # One line naming the key and the problem; no traceback.
    log = cluster.agents["n2"].log_path.read_text()
    assert f"metrics.listen {taken}: cannot listen: Address already in use" in log
    assert "Traceback" not in log
    off = await asyncio.to_thread(cluster.add_agent, "n3", metrics={"listen": None})
    assert off.metrics_url is None
    assert "metrics on http" not in off.log_path.read_text()
    assert "metrics on http" in cluster.agents["n1"].log_path.read_text()


def scrape_from(url: str, source: str) -> tuple[int, bytes]:
    """GET url from the loopback address source (the connection's peer the agent sees)."""
    where = urllib.parse.urlsplit(url)
    assert where.hostname is not None and where.port is not None
    conn = http.client.HTTPConnection(where.hostname, where.port, 10, (source, 0))
    try:
        conn.request("GET", where.path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


async def test_metrics_allow_admits_only_the_listed_peers(cluster_factory: ClusterFactory) -> None:
    # Loopback is all of 127.0.0.0/8: a connection can come from any address of it.
    allow = {"metrics": {"allow": ["127.0.0.2", "127.0.1.0/24"]}}
    cluster = await asyncio.to_thread(cluster_factory, ["n1"], agent_overrides=allow)
    url = cluster.agents["n1"].metrics_url
    assert url is not None
    for source in ("127.0.0.2", "127.0.1.5"):
        status, body = await asyncio.to_thread(scrape_from, url, source)
        assert status == 200, source
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "schedagent_is_leader" in names, source
    # The listen address's own, 127.0.0.1, is not listed: 403 and not one figure.
    assert await asyncio.to_thread(scrape_from, url, "127.0.0.1") == (403, b"")
    assert await asyncio.to_thread(scrape_from, url, "127.0.0.3") == (403, b"")
