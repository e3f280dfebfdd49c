"""The test harness leaves nothing behind: jobs of a SIGKILLed agent end with the cluster."""

from __future__ import annotations

from pathlib import Path

from apiclient import ApiClient
from helpers import wait_until
from schedagent.dev.cluster import LocalCluster
from schedagent.host.jobprocs import job_attempts


async def test_a_killed_agents_jobs_are_killed_when_the_cluster_stops(tmp_path: Path) -> None:
    # Outside systemd a SIGKILLed agent's job lives on; with no agent back to reap it,
    # only the harness can. Before: it outlived the test run.
    cluster = LocalCluster(1, base_dir=tmp_path / "cluster", agent_overrides={"node_ttl": 3})
    await cluster.astart()
    try:
        async with ApiClient(cluster.nats_url) as api:
            job_id = await api.submit("sleep 600")
            await api.wait_for(job_id, {"RUNNING"})
        await wait_until(lambda: (job_id, 1) in job_attempts(), 10, "the job's process")
        cluster.agents["node1"].kill()
        assert (job_id, 1) in job_attempts(), "outside systemd the job outlives its agent"
    finally:
        await cluster.astop()
    await wait_until(lambda: (job_id, 1) not in job_attempts(), 5, "the orphan killed")
