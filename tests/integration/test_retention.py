"""Retention on a real etcd: old finished jobs go (with their idempotency keys), active and
recent ones stay, long histories are swept page by page, an older version's final records
under jobs/ are swept or moved to done/, and a deposed leader deletes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

import etcdhttp
from apiclient import ApiClient
from fleethelp import group_id_of, schedctl, signed_group
from schedagent.config import JobsConfig
from schedagent.core.fleet import part_job_id
from schedagent.core.model import Job, JobState, new_job_id
from schedagent.core.names import Keys
from schedagent.core.spec import parse_spec
from schedagent.daemon.groupretention import sweep_groups
from schedagent.daemon.retention import Retention
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.procs import EtcdServer
from schedagent.errors import FencedError
from schedagent.etcd.groupstore import GroupStore
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import CreateRevisionIs, Put, Store

KEYS = Keys("/schedagent")


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[Store]:
    etcd = Store([etcd_server.url])
    await etcd.connect()
    yield etcd
    await etcd.close()


def record(submitted: float, state: JobState, updated: float, idem: str | None = None) -> Job:
    spec = parse_spec({"cmd": "true", "idempotency_key": idem})
    job = Job(id=new_job_id(submitted), spec=spec, state=state, submitted_at=submitted)
    job.updated_at = updated
    return job


def where(job: Job) -> str:
    """Where this version keeps the record: final ones under done/."""
    return KEYS.done_job(job.id) if job.state.final else KEYS.job(job.id)


async def put(store: Store, jobs: list[Job], key: Callable[[Job], str] = where) -> None:
    for job in jobs:
        ops = [Put(key(job), job.to_json())]
        if job.spec.idempotency_key is not None:
            ops.append(Put(KEYS.idem(job.spec.idempotency_key), job.id.encode()))
        assert await store.txn([], ops)


async def remaining(store: Store, prefix: str) -> set[str]:
    kvs, _ = await store.get_prefix(prefix)
    return {kv.key for kv in kvs}


async def test_a_sweep_deletes_old_finished_jobs_page_by_page(store: Store) -> None:
    now = time.time()
    old = [record(now - 3600 + i, JobState.SUCCEEDED, now - 3000) for i in range(600)]
    old.append(record(now - 3600, JobState.CANCELED, now - 3000, idem="nightly"))
    keep = [
        record(now - 3600, JobState.RUNNING, now - 3000),  # long-running: never
        record(now - 3600, JobState.PENDING, now - 3000),
        record(now - 3600, JobState.FAILED, now - 10),  # ended after the cutoff
        record(now - 10, JobState.SUCCEEDED, now - 5),  # recent
    ]
    await put(store, old + keep)
    retention = Retention(lambda: JobsConfig(retention=600), JobStore(store, KEYS), [])
    assert await retention.sweep(now - 600) == len(old)
    assert await remaining(store, KEYS.jobs) | await remaining(store, KEYS.done) == {
        where(j) for j in keep
    }
    assert await remaining(store, KEYS.idem_dir) == set()
    assert await retention.sweep(now - 600) == 0


async def test_an_older_versions_final_records_under_jobs_are_swept_or_moved(store: Store) -> None:
    now = time.time()
    expired = [record(now - 3600 + i, JobState.SUCCEEDED, now - 3000) for i in range(300)]
    recent = [record(now - 3600 + i, JobState.FAILED, now - 10) for i in range(300)]
    live = [record(now - 3600, JobState.RUNNING, now - 3000)]
    await put(store, expired + recent + live, key=lambda j: KEYS.job(j.id))
    retention = Retention(lambda: JobsConfig(retention=600), JobStore(store, KEYS), [])
    assert await retention.sweep(now - 600) == len(expired)
    assert await retention.move_old_final_records() == len(recent)
    assert await remaining(store, KEYS.jobs) == {KEYS.job(j.id) for j in live}
    assert await remaining(store, KEYS.done) == {KEYS.done_job(j.id) for j in recent}
    moved, _ = await JobStore(store, KEYS).get(recent[0].id)
    assert moved.updated_at == recent[0].updated_at  # retention still counts from the end
    assert await retention.move_old_final_records() == 0


async def test_a_deposed_leader_deletes_nothing(store: Store) -> None:
    now = time.time()
    jobs = [record(now - 3600, JobState.SUCCEEDED, now - 3000) for _ in range(3)]
    await put(store, jobs)
    older = [record(now - 3600, JobState.SUCCEEDED, now - 10) for _ in range(3)]
    await put(store, older, key=lambda j: KEYS.job(j.id))
    assert await store.txn([], [Put("/schedagent/leader/x", b"x")])
    lost_fence = [CreateRevisionIs("/schedagent/leader/x", 1)]  # not its create revision
    retention = Retention(lambda: JobsConfig(retention=600), JobStore(store, KEYS), lost_fence)
    with pytest.raises(FencedError):
        await retention.sweep(now - 600)
    with pytest.raises(FencedError):
        await retention.move_old_final_records()
    assert len(await remaining(store, KEYS.done)) == 3
    assert len(await remaining(store, KEYS.jobs)) == 3


async def test_a_fleet_run_goes_once_every_one_of_its_jobs_has(store: Store) -> None:
    now = time.time()
    jobs = JobStore(store, KEYS)
    groups = GroupStore(store, KEYS)

    async def put_group(hosts: list[str], done: bool, accepted: float, parts: list[str]) -> str:
        group = signed_group("true", {"all": True}, hosts, accepted_at=accepted)
        group = dataclasses.replace(group, done=done)
        assert await groups.create(group)
        for host in parts:
            spec, part_id = group.part_spec(host), part_job_id(group.id, host)
            part = Job(id=part_id, spec=spec, state=JobState.SUCCEEDED, submitted_at=now)
            part.updated_at = now
            await put(store, [part])
        return group.id

    gone = await put_group(["a", "b"], True, now - 3600, [])
    part_left = await put_group(["a", "b"], True, now - 3600, ["b"])
    not_ended = await put_group(["a"], False, now - 3600, [])
    recent = await put_group(["a"], True, now - 10, [])
    assert await sweep_groups(groups, now - 600, []) == 1
    assert await remaining(store, KEYS.groups) == {
        KEYS.group(g) for g in (part_left, not_ended, recent)
    }
    assert KEYS.group(gone) not in await remaining(store, KEYS.groups)
    # Its last part swept by the job retention, the group follows at the next sweep.
    assert await Retention(lambda: JobsConfig(retention=600), jobs, []).sweep(now + 1) == 1
    assert await sweep_groups(groups, now - 600, []) == 1
    assert KEYS.group(part_left) not in await remaining(store, KEYS.groups)
    # A deposed leader deletes none (`recent` is past this cutoff).
    lost_fence = [CreateRevisionIs(KEYS.job("no-such-election-key"), 1)]
    await store.txn([], [Put(KEYS.group(not_ended), b"")])  # malformed: logged, skipped
    assert await sweep_groups(groups, now, lost_fence) == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        2,
        base_dir=tmp_path_factory.mktemp("retention"),
        agent_overrides={"jobs": {"retention": 3}},
    ) as local:
        yield local


@pytest.mark.slow
async def test_the_leader_forgets_finished_jobs_after_the_retention(cluster: LocalCluster) -> None:
    async with ApiClient(cluster.nats_url) as api:
        done = await api.submit("echo old", idempotency_key="nightly")
        assert (await api.wait_for(done, deadline=20))["state"] == "SUCCEEDED"
        pending = await api.submit("true", labels={"zone": "nowhere"})
        running = await api.submit("sleep 15")
        deadline = time.monotonic() + 30
        while (await api.raw("get", json.dumps({"v": 1, "id": done}).encode())).get("ok"):
            assert time.monotonic() < deadline, "the finished job was never deleted"
            await asyncio.sleep(0.2)
        assert (await api.get(pending))["state"] == "PENDING"
        assert (await api.get(running))["state"] == "RUNNING"
        # The idempotency key went with its job: the same key makes a new job.
        again = await api.submit("echo new", idempotency_key="nightly")
        assert again != done
        await api.call("cancel", id=pending)
        await api.call("cancel", id=running)


@pytest.mark.slow
async def test_the_leader_forgets_a_fleet_run_after_its_jobs(cluster: LocalCluster) -> None:
    done = await asyncio.to_thread(schedctl, cluster, "run", "--all", "--cmd", "true", "--wait")
    assert done.returncode == 0, done.stderr
    group = group_id_of(done)
    deadline = time.monotonic() + 30
    while await asyncio.to_thread(
        etcdhttp.get, cluster.etcd_endpoint, cluster.etcd_prefix + "/groups/" + group
    ):
        assert time.monotonic() < deadline, "the ended fleet run was never deleted"
        await asyncio.sleep(0.2)
    # Its jobs went first: no record of any part is left.
    left = await asyncio.to_thread(etcdhttp.under, cluster.etcd_endpoint, cluster.etcd_prefix + "/")
    assert not [key for key, value in left.items() if group.encode() in value], sorted(left)
