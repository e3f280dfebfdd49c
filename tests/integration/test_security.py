"""Signed jobs end to end: what a compromised leader or bus can inject is refused and audited."""

from __future__ import annotations

import asyncio
import json
import pwd
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import etcdhttp
from apiclient import ApiClient
from forge import dispatch_assigned
from helpers import live_processes_with, marker, wait_until
from schedagent.core.model import Job, new_job_id
from schedagent.core.signing import SigningKey
from schedagent.core.spec import parse_spec
from schedagent.dev import marks
from schedagent.dev.cluster import LocalCluster, harness_key
from schedagent.dev.invariants import check_executions
from schedagent.etcd.store import Store
from schedagent.host.jobprocs import job_attempts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(2, base_dir=tmp_path_factory.mktemp("secure")) as local:
        yield local


async def inject(store: Store, api: ApiClient, spec: dict[str, Any], node: str = "node1") -> str:
    """What a compromised leader can do: write an ASSIGNED record and dispatch it."""
    return await dispatch_assigned(store, api, new_job_id(time.time()), parse_spec(spec), node)


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


async def test_a_signed_job_retried_after_its_nonce_expired_still_runs(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # The freshness window guards the first start only. Once the nonce's lease expired
    # (here: deleted, as its expiry would), a retry claimed it as new and was refused
    # as "signed too long before its first start". Before: the second attempt failed so.
    overrides = {"security": {"signature_max_age": 2}, "jobs": {"retry_backoff": 0.2}}
    cluster: LocalCluster = cluster_factory(2, agent_overrides=overrides)
    ran = tmp_path / "marks"
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(marks.marked("sleep 3; exit 1", ran), retries=1)
        job = await api.wait_for(job_id, {"RUNNING"})
        nonce = job["spec"]["signature"]["nonce"]
        nonce_key = f"{cluster.etcd_prefix}/nonces/{nonce}"
        assert etcdhttp.get(cluster.etcd_endpoint, nonce_key) == job_id.encode()
        etcdhttp.delete(cluster.etcd_endpoint, nonce_key)
        job = await api.wait_for(job_id, deadline=30)
    assert [a["reason"] for a in job["attempts"]] == ["exit code 1", "exit code 1"], job
    records = {job_id: Job.from_dict(job)}
    assert sorted(marks.by_attempt(marks.read_file(ran))) == [(job_id, 1), (job_id, 2)]
    assert check_executions(marks.read_file(ran), records) == []


async def test_a_second_signed_job_with_a_replayed_nonce_is_still_refused_after_expiry(
    cluster_factory: Any,
) -> None:
    # What the freshness window is for: once the nonce is forgotten, a replay of an old
    # signature (in a new record, with no attempt that ever started) is refused for age.
    cluster: LocalCluster = cluster_factory(
        1, agent_overrides={"security": {"signature_max_age": 1}}
    )
    async with ApiClient(cluster.nats_url) as api:
        store = Store([cluster.etcd_endpoint])
        await store.connect()
        try:
            spec = signed({"cmd": "echo once"})
            first = await inject(store, api, spec)
            assert (await api.wait_for(first, deadline=20))["state"] == "SUCCEEDED"
            etcdhttp.delete(
                cluster.etcd_endpoint, f"/schedagent/nonces/{spec['signature']['nonce']}"
            )
            await asyncio.sleep(1.5)
            replay = await inject(store, api, spec)
            await refused(api, replay, "signature rejected: signed too long before its first start")
        finally:
            await store.close()


async def test_run_as_runs_the_job_as_that_user(cluster_factory: Any) -> None:
    # The agents here run as root (the tests do), so they can switch users.
    user = pwd.getpwnam("nobody")
    cluster: LocalCluster = cluster_factory(
        1, agent_overrides={"security": {"run_as_allowed": ["nobody"]}}
    )
    async with ApiClient(cluster.nats_url) as api:
        mark = marker()
        job_id = await api.submit(f"id -un; id -u; sleep {mark}", user="nobody")
        await api.wait_for(job_id, {"RUNNING"})
        # Its sleep: both ids are printed by then (a cancel before would cut them off).
        await wait_until(lambda: live_processes_with(str(mark)), 10, "the job's sleep")
        await wait_until(lambda: (job_id, 1) in job_attempts(), 10, "the job's processes")
        # From the process table, not from what the agent recorded.
        uids = {p.uids().real for p in job_attempts()[(job_id, 1)]}
        assert uids == {user.pw_uid}, uids
        await api.call("cancel", id=job_id)
        job = await api.wait_for(job_id, deadline=20)
    assert job["output_tail"].startswith(f"nobody\n{user.pw_uid}\n"), job["output_tail"]


async def test_a_job_naming_no_user_runs_as_the_job_user_in_its_home(
    cluster_factory: Any,
) -> None:
    user = pwd.getpwnam("nobody")
    home = await asyncio.to_thread(lambda: user.pw_dir if Path(user.pw_dir).is_dir() else "/")
    cluster: LocalCluster = cluster_factory(1, agent_overrides={"security": {"job_user": "nobody"}})
    async with ApiClient(cluster.nats_url) as api:
        job_id = await api.submit(f"id -un; pwd; sleep {marker()}")
        await api.wait_for(job_id, {"RUNNING"})
        await wait_until(lambda: (job_id, 1) in job_attempts(), 10, "the job's processes")
        uids = {p.uids().real for p in job_attempts()[(job_id, 1)]}
        assert uids == {user.pw_uid}, uids
        await api.call("cancel", id=job_id)
        job = await api.wait_for(job_id, deadline=20)
    assert job["output_tail"].startswith(f"nobody\n{home}\n"), job["output_tail"]


async def test_the_api_refuses_requests_beyond_its_rate_and_recovers(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(
        1, agent_overrides={"security": {"max_requests_per_second": 5}}
    )
    async with ApiClient(cluster.nats_url) as api:
        # The cluster is up once its agent is registered, a moment before its API
        # subscribes: one request that waits for an answer, then a second for the
        # limiter to refill, before the burst (whose requests do not retry).
        assert (await api.call("leader"))["ok"]
        await asyncio.sleep(1.0)
        body = json.dumps({"v": 1}).encode()
        replies = await asyncio.gather(
            *(api.nc.request("sched.api.leader", body, timeout=10) for _ in range(40))
        )
        answers = [json.loads(r.data) for r in replies]
        refused = [a for a in answers if not a.get("ok")]
        # A burst of one second's worth (5), refilled at 5/s while the burst is served.
        assert 25 <= len(refused) <= 35, answers
        assert {(a["code"], a["error"]) for a in refused} == {
            ("unavailable", "too many requests to this agent; try again")
        }
        await asyncio.sleep(1.0)
        assert (await api.call("leader"))["ok"]
