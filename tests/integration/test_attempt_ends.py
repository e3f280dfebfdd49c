"""Every attempt that starts also ends, with a reason, whatever the job or the worker does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import etcdhttp
from apiclient import ApiClient
from schedagent.core.model import Attempt, Job, JobSpec, JobState, new_job_id
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster, harness_key
from schedagent.dev.invariants import check_executions, check_jobs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(2, base_dir=tmp_path_factory.mktemp("ends")) as local:
        yield local


async def test_a_signal_python_has_no_name_for_ends_the_job(api: ApiClient, tmp_path: Path) -> None:
    # Before: signal.Signals(35) raised while recording the end; the job stayed RUNNING.
    ran = tmp_path / "marks"
    job_id = await api.submit(marks.marked("kill -s RTMIN+1 $$", ran), retries=1)
    job = await api.wait_for(job_id, deadline=20)
    assert (job["state"], job["reason"]) == ("FAILED", "killed by SIGRTMIN+1"), job
    assert [a["reason"] for a in job["attempts"]] == ["killed by SIGRTMIN+1"] * 2
    records = {job_id: Job.from_dict(job)}
    assert check_executions(marks.read_file(ran), records) == []
    assert check_jobs([job_id], records) == []


async def test_a_spec_the_os_refuses_at_spawn_ends_the_job(
    api: ApiClient, cluster: LocalCluster
) -> None:
    # A record no submit can make (parse_spec refuses the name), as a leader of another
    # version or a bug could write it: exec refuses the environment with a ValueError,
    # not an OSError. Before: the job stayed RUNNING with nothing behind it.
    spec = {"cmd": "echo never", "env": {"A=B": "1"}}
    signature = harness_key()[0].sign(spec).to_dict()
    job_id = await _inject(
        cluster, api, JobSpec(cmd="echo never", env={"A=B": "1"}, signature=signature)
    )
    job = await api.wait_for(job_id, deadline=20)
    assert job["state"] == "FAILED", job
    assert job["reason"].startswith("cannot start: ValueError("), job["reason"]
    assert job["attempts"][0]["started_at"] is not None
    assert check_jobs([job_id], {job_id: Job.from_dict(job)}) == []


async def _inject(cluster: LocalCluster, api: ApiClient, spec: JobSpec, node: str = "node1") -> str:
    """An ASSIGNED record written straight to etcd, and its dispatch."""
    now = time.time()
    job = Job(
        id=new_job_id(now),
        spec=spec,
        state=JobState.ASSIGNED,
        submitted_at=now,
        node=node,
        attempts=[Attempt(n=1, node=node, assigned_at=now)],
    )
    etcdhttp.put(cluster.etcd_endpoint, f"{cluster.etcd_prefix}/jobs/{job.id}", job.to_json())
    body = json.dumps({"v": 1, "job": job.id, "attempt": 1}).encode()
    await api.nc.jetstream().publish(f"{cluster.nats_prefix}.dispatch.{node}", body)
    return job.id
