"""Signed jobs end to end: what a compromised leader or bus can inject is refused and audited."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from apiclient import ApiClient
from schedagent.core.model import Attempt, Job, JobState, new_job_id
from schedagent.core.names import Keys
from schedagent.core.signing import SigningKey
from schedagent.core.spec import parse_spec
from schedagent.dev.cluster import LocalCluster, harness_key
from schedagent.etcd.store import Put, Store


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(2, base_dir=tmp_path_factory.mktemp("secure")) as local:
        yield local


@pytest.fixture
async def api(cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with ApiClient(cluster.nats_url) as client:
        yield client


@pytest.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[Store]:
    etcd = Store([cluster.etcd_endpoint])
    await etcd.connect()
    yield etcd
    await etcd.close()


async def inject(store: Store, api: ApiClient, spec: dict[str, Any], node: str = "node1") -> str:
    """What a compromised leader can do: write an ASSIGNED record and dispatch it."""
    now = time.time()
    job = Job(
        id=new_job_id(now),
        spec=parse_spec(spec),
        state=JobState.ASSIGNED,
        submitted_at=now,
        node=node,
        attempts=[Attempt(n=1, node=node, assigned_at=now)],
    )
    await store.txn([], [Put(Keys("/schedagent").job(job.id), job.to_json())])
    body = json.dumps({"v": 1, "job": job.id, "attempt": 1}).encode()
    await api.nc.jetstream().publish(f"sched.dispatch.{node}", body)
    return job.id


def signed(spec: dict[str, Any], key: SigningKey | None = None) -> dict[str, Any]:
    return {**spec, "signature": (key or harness_key()[0]).sign(spec).to_dict()}


async def refused(api: ApiClient, job_id: str, why: str) -> None:
    job = await api.wait_for(job_id, deadline=20)
    assert job["state"] == "FAILED", job
    assert job["reason"].startswith(why), job["reason"]
    assert job["attempts"][0]["started_at"] is None, "a refused job must never start"


async def test_unsigned_job_is_refused_at_submit(api: ApiClient) -> None:
    reply = await api.raw("submit", json.dumps({"v": 1, "spec": {"cmd": "id"}}).encode())
    assert (reply["ok"], reply["code"]) == (False, "bad_request")
    assert "signature rejected: job is not signed" in reply["error"]


@pytest.mark.parametrize(
    ("make_spec", "why"),
    [
        (lambda: {"cmd": "touch /tmp/pwned"}, "signature rejected: job is not signed"),
        (
            lambda: signed({"cmd": "touch /tmp/pwned"}, SigningKey.generate()),
            "signature rejected: signed by unknown key",
        ),
        (
            lambda: {**signed({"cmd": "echo harmless"}), "cmd": "touch /tmp/pwned"},
            "signature rejected: signature by",
        ),
    ],
    ids=["unsigned", "unknown-key", "altered"],
)
async def test_injected_jobs_are_refused_by_the_worker(
    api: ApiClient, store: Store, cluster: LocalCluster, make_spec: Any, why: str
) -> None:
    job_id = await inject(store, api, make_spec())
    await refused(api, job_id, why)
    log = cluster.agents["node1"].log_tail(300)
    assert f"audit refused job {job_id}" in log


async def test_replayed_signature_is_refused(
    api: ApiClient, store: Store, cluster: LocalCluster
) -> None:
    spec = signed({"cmd": "echo once"})
    first = await inject(store, api, spec)
    assert (await api.wait_for(first, deadline=20))["state"] == "SUCCEEDED"
    replay = await inject(store, api, spec)
    await refused(api, replay, "signature rejected: replayed")


async def test_a_later_attempt_of_the_same_job_reuses_its_nonce(api: ApiClient) -> None:
    job = await api.wait_for(await api.submit("exit 1", retries=1), deadline=30)
    assert [a["state"] for a in job["attempts"]] == ["FAILED", "FAILED"]
    assert job["reason"] == "exit code 1"


async def test_run_as_a_user_outside_the_allowlist_is_refused(api: ApiClient) -> None:
    job_id = await api.submit("id", user="root")
    await refused(api, job_id, "run-as refused: user 'root' is not in this agent's run_as_allowed")


async def test_a_signed_job_from_a_trusted_key_runs(api: ApiClient) -> None:
    job = await api.wait_for(await api.submit("echo trusted"), deadline=20)
    assert (job["state"], job["output_tail"]) == ("SUCCEEDED", "trusted\n")


async def test_a_cancel_must_be_signed_by_a_trusted_key_for_that_job(
    api: ApiClient, cluster: LocalCluster
) -> None:
    job_id = await api.submit("sleep 60")
    other_id = await api.submit("sleep 60")
    stranger = SigningKey.generate()
    attempts = {
        "unsigned": None,
        "unknown-key": stranger.sign_cancel(job_id).to_dict(),
        "for another job": harness_key()[0].sign_cancel(other_id).to_dict(),
        "a job's signature": harness_key()[0].sign({"cmd": "sleep 60"}).to_dict(),
    }
    for name, signature in attempts.items():
        body: dict[str, Any] = {"v": 1, "id": job_id}
        if signature is not None:
            body["signature"] = signature
        reply = await api.raw("cancel", json.dumps(body).encode())
        assert (reply["ok"], reply["code"]) == (False, "bad_request"), name
        assert reply["error"].startswith("signature rejected: "), (name, reply)
    assert (await api.get(job_id))["state"] in ("PENDING", "ASSIGNED", "RUNNING")
    logs = "".join(agent.log_tail(400) for agent in cluster.agents.values())
    assert f"audit cancel job {job_id} key {stranger.key_id}: signature rejected" in logs

    await api.call("cancel", id=job_id)  # signed with the trusted key
    job = await api.wait_for(job_id, deadline=20)
    assert job["state"] == "CANCELED", job
    logs = "".join(agent.log_tail(400) for agent in cluster.agents.values())
    assert f"audit cancel job {job_id} key {harness_key()[0].key_id}: requested while" in logs
    await api.call("cancel", id=other_id)
