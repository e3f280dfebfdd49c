"""History apart from the live work, on real servers: finished records move to done/, an
index per node names the placed attempts, and a history past any single 4 MiB etcd read
stops neither a new leader nor a restarted agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from apiclient import ApiClient
from helpers import live_processes_with, marker, wait_until
from schedagent.core import transitions
from schedagent.core.model import Job, JobState, Outcome
from schedagent.core.names import Keys
from schedagent.core.spec import parse_spec
from schedagent.core.tail import Tail
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.history import finished_record, load_finished
from schedagent.dev.invariants import check_placements
from schedagent.dev.procs import EtcdServer
from schedagent.errors import NotFoundError
from schedagent.etcd.jobstore import JobStore, Mutation, decode_job
from schedagent.etcd.mirror import Mirror
from schedagent.etcd.store import KV, Put, Store

KEYS = Keys("/schedagent")
GRPC_LIMIT = 4 * 2**20
BACKOFF = transitions.Backoff(0.1, 1.0)
TTL = 3
FAST = {
    "node_ttl": TTL,
    "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0, "kill_grace": 1.0},
}
# Finished records with 4 KiB of binary output: those under done/, and those an older
# version left under jobs/. Each set alone is past gRPC's 4 MiB message limit.
DONE_RECORDS = 1500
OLD_RECORDS = 1000
FAILOVER_DEADLINE = 10.0


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[Store]:
    etcd = Store([etcd_server.url])
    await etcd.connect()
    yield etcd
    await etcd.close()


def _live(key: str, raw: bytes) -> Job | None:
    job = decode_job(KV(key, raw, 0, 0, 0))
    return None if job is None or job.state.final else job


async def test_a_prefix_past_the_grpc_limit_is_read_in_pages_at_one_revision(
    store: Store,
) -> None:
    assert await load_finished(store, KEYS.jobs, OLD_RECORDS) > GRPC_LIMIT
    pages = []
    async for page in store.scan(KEYS.jobs):
        if not pages:  # written after the first page: not in the snapshot
            assert await store.txn([], [Put(KEYS.job("f" * 20), b"{}")])
        pages.append(page)
    keys = [kv.key for page in pages for kv in page.kvs]
    assert len(pages) > 1 and len(keys) == OLD_RECORDS and keys == sorted(keys)
    assert {page.revision for page in pages} == {pages[0].revision}


async def test_the_view_of_live_jobs_skips_an_older_versions_history(store: Store) -> None:
    await load_finished(store, KEYS.jobs, OLD_RECORDS)
    jobs = JobStore(store, KEYS)
    live, _ = await jobs.create(parse_spec({"cmd": "true"}))
    view: Mirror[Job] = Mirror(store, KEYS.jobs, _live)
    follower = asyncio.create_task(view.run())
    try:
        await asyncio.wait_for(view.synced.wait(), 10)
        assert list(view.items) == [KEYS.job(live.id)]
        assert [j.id for j, _ in (await jobs.all())[0]] == [live.id]
        # The watch goes on from the snapshot's revision.
        later, _ = await jobs.create(parse_spec({"cmd": "true"}))
        await wait_until(lambda: KEYS.job(later.id) in view.items, 10, "the watch to see a job")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_the_final_write_moves_a_job_to_done_and_the_index_follows_its_node(
    store: Store,
) -> None:
    jobs = JobStore(store, KEYS)
    created, _ = await jobs.create(parse_spec({"cmd": "true", "retries": 1}))
    job_id = created.id
    await _step(jobs, job_id, lambda j: transitions.assign(j, "n1", time.time()))
    assert await jobs.placed_on("n1") == [(job_id, 1)]
    await _step(jobs, job_id, lambda j: transitions.hand_back(j, "n1", 1, "stopping", 0.0))
    assert await jobs.placed_on("n1") == []
    await _step(jobs, job_id, lambda j: transitions.assign(j, "n2", time.time()))
    await _step(jobs, job_id, lambda j: transitions.start(j, "n2", 2, time.time(), 7))
    assert await jobs.placed_on("n2") == [(job_id, 2)]
    assert await store.get(KEYS.done_job(job_id)) is None
    ended = Outcome(started_at=time.time(), ended_at=time.time(), exit_code=0)
    done = await _step(
        jobs, job_id, lambda j: transitions.finish(j, "n2", 2, ended, Tail(), BACKOFF)
    )
    assert done.state == JobState.SUCCEEDED
    assert await store.get(KEYS.job(job_id)) is None
    assert await store.get(KEYS.done_job(job_id)) is not None
    assert await jobs.placed_on("n2") == []
    assert (await jobs.get(job_id))[0].state == JobState.SUCCEEDED
    # A cancel of a finished job changes nothing, wherever the record is.
    after, changed = await jobs.update(job_id, lambda j: transitions.cancel(j, time.time()))
    assert not changed and after.state == JobState.SUCCEEDED


async def test_placements_and_ends_written_together_keep_the_index(store: Store) -> None:
    jobs = JobStore(store, KEYS)
    ids = [(await jobs.create(parse_spec({"cmd": "true"})))[0].id for _ in range(3)]
    read = [await jobs.get(i) for i in ids]
    now = time.time()
    placed = [(transitions.assign(j.clone(), "n1", now), rev) for j, rev in read]
    assert await jobs.write_many([(j, rev) for j, rev in placed if j is not None])
    assert sorted(await jobs.placed_on("n1")) == sorted((i, 1) for i in ids)
    read = [await jobs.get(i) for i in ids]
    canceled = [(transitions.cancel(j.clone(), now), rev) for j, rev in read[:2]]
    assert await jobs.write_many([(j, rev) for j, rev in canceled if j is not None])
    assert await jobs.placed_on("n1") == [(ids[2], 1)]
    assert {kv.key for kv in (await store.get_prefix(KEYS.done))[0]} == {
        KEYS.done_job(i) for i in ids[:2]
    }


async def test_placement_keys_an_older_version_left_behind_are_dropped(store: Store) -> None:
    jobs = JobStore(store, KEYS)
    held, _ = await jobs.create(parse_spec({"cmd": "true"}))
    held = await _step(jobs, held.id, lambda j: transitions.assign(j, "n1", time.time()))
    # An older version finished this one on n1 without touching the index.
    ended = finished_record(time.time(), "n1")
    assert await store.txn([], [Put(KEYS.job(ended.id), ended.to_json())])
    stale = [KEYS.placement("n1", ended.id), KEYS.placement("n1", "0" * 20)]
    assert await store.txn([], [Put(key, b"1") for key in stale])
    assert [j.id for j in await jobs.placed_records("n1")] == [held.id]
    assert await jobs.placed_on("n1") == [(held.id, 1)]


async def test_a_job_moving_to_done_is_never_reported_missing(store: Store) -> None:
    jobs = JobStore(store, KEYS)
    ids = [(await jobs.create(parse_spec({"cmd": "true"})))[0].id for _ in range(30)]
    missing: list[str] = []

    async def read_all() -> None:
        for _ in range(5):
            for job_id in ids:
                try:
                    await jobs.get(job_id)
                except NotFoundError:
                    missing.append(job_id)

    async def cancel_all() -> None:
        for job_id in ids:
            await jobs.update(job_id, lambda j: transitions.cancel(j, time.time()))

    await asyncio.gather(read_all(), cancel_all(), read_all())
    assert missing == []
    assert len((await store.get_prefix(KEYS.done))[0]) == len(ids)


async def test_newest_merges_live_done_and_old_records_by_id(store: Store) -> None:
    jobs = JobStore(store, KEYS)
    now = time.time()
    # Finished ones under done/ and, as an older version kept them, under jobs/.
    done = [finished_record(now - 200 + i, "n1") for i in range(0, 100, 10)]
    old = [finished_record(now - 195 + i, "n1") for i in range(0, 100, 10)]
    assert await store.txn([], [Put(f"{KEYS.prefix}/done/{j.id}", j.to_json()) for j in done])
    assert await store.txn([], [Put(KEYS.job(j.id), j.to_json()) for j in old])
    ids = [(await jobs.create(parse_spec({"cmd": "true"})))[0].id for _ in range(4)]
    for job_id in ids[1::2]:
        await jobs.update(job_id, lambda j: transitions.cancel(j, time.time()))
    everything = sorted([j.id for j in done + old] + ids, reverse=True)
    assert [j.id for j in await jobs.newest(100)] == everything
    assert [j.id for j in await jobs.newest(3, before=everything[5])] == everything[6:9]
    assert [j.id for j in await jobs.newest(100, JobState.PENDING)] == [ids[2], ids[0]]
    succeeded = await jobs.newest(100, JobState.SUCCEEDED)
    assert [j.id for j in succeeded] == sorted((j.id for j in done + old), reverse=True)


async def test_newest_first_reads_windows_of_about_a_page_across_bursts_and_gaps(
    store: Store,
) -> None:
    now = time.time()
    # One a year ago, 50 over an hour a day ago, a burst of 300 over the last 30 ms.
    times = [now - 365 * 86400] + [now - 90000 + i * 72 for i in range(50)]
    times += [now - 0.03 + i * 1e-4 for i in range(300)]
    records = [finished_record(t, "n1", tail_bytes=16) for t in times]
    for first in range(0, len(records), 100):
        batch = records[first : first + 100]
        assert await store.txn([], [Put(KEYS.done_job(j.id), j.to_json()) for j in batch])
    newest = sorted((j.id for j in records), reverse=True)
    jobs = JobStore(store, KEYS)
    for size in (1, 7, 64):
        assert [j.id async for j in jobs.iter_newest(page_size=size)] == newest
    assert [j.id async for j in jobs.iter_newest(before=newest[99], page_size=7)] == newest[100:]
    # etcd sorts what a descending read's range holds: each holds about a page.
    windows: list[tuple[str, str]] = []
    read = store.range_page

    async def spy(start: str, end: str, limit: int, **kw: Any) -> Any:
        windows.append((start, end))
        return await read(start, end, limit, **kw)

    store.range_page = spy  # type: ignore[method-assign]
    listed = []
    async for job in jobs.iter_newest(page_size=10):
        listed.append(job.id)
        if len(listed) == 60:
            break
    assert listed == newest[:60]
    held = [(await store.count(start, end))[0] for start, end in windows if KEYS.done in start]
    assert len(held) >= 6 and max(held) <= 4 * 10, held


async def _step(jobs: JobStore, job_id: str, mutate: Mutation) -> Job:
    job, changed = await jobs.update(job_id, mutate)
    assert changed, f"{job_id}: the transition did not apply to {job.state}"
    return job


async def _load_history(cluster: LocalCluster) -> None:
    """Finished records with binary output, written straight into etcd: under done/,
    and under jobs/ as an older version kept them (raw keys, as any version reads)."""
    store = Store([cluster.etcd_endpoint])
    await store.connect()
    try:
        prefix, nodes = cluster.etcd_prefix, list(cluster.agents)
        assert await load_finished(store, f"{prefix}/done/", DONE_RECORDS, nodes=nodes)
        assert await load_finished(store, f"{prefix}/jobs/", OLD_RECORDS, nodes=nodes) > GRPC_LIMIT
    finally:
        await store.close()


async def _run_binary_jobs(api: ApiClient, count: int) -> None:
    ids = [await api.submit("head -c 4096 /dev/urandom") for _ in range(count)]
    for job_id in ids:
        assert (await api.wait_for(job_id))["state"] == "SUCCEEDED"


def _placed(cluster: LocalCluster) -> list[tuple[str, str]]:
    """(node, job id) of every key of the placement index, via etcd's gateway."""
    prefix = f"{cluster.etcd_prefix}/placed/"
    keys = cluster.etcd.keys(prefix)
    return [(node, job_id) for node, job_id in (k[len(prefix) :].split("/") for k in keys)]


async def _assert_index_holds(api: ApiClient, cluster: LocalCluster, ids: list[str]) -> None:
    records = {i: Job.from_dict(await api.get(i)) for i in ids}
    assert check_placements(records, await asyncio.to_thread(_placed, cluster)) == []


@pytest.mark.slow
async def test_a_new_leader_runs_a_job_within_the_failover_target_after_a_long_history(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = await asyncio.to_thread(cluster_factory, 3, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        await _run_binary_jobs(api, 20)
        await _load_history(cluster)
        leader = await api.leader_node()
        cluster.agents[leader].kill()
        killed = time.monotonic()
        mark = tmp_path / "ran-after-failover"
        job_id = await api.submit(f"echo ran > {mark}")
        await wait_until(mark.exists, FAILOVER_DEADLINE, "the job submitted after the failover")
        assert time.monotonic() - killed <= FAILOVER_DEADLINE
        assert await api.leader_node(not_=leader) != leader
        assert (await api.wait_for(job_id))["state"] == "SUCCEEDED"
        # The history is still there to read, newest first, a reply at a time.
        newest = (await api.call("list", limit=50))["jobs"]
        assert newest[0]["id"] == job_id and newest[0]["state"] == "SUCCEEDED"
        await _assert_index_holds(api, cluster, [job_id])


@pytest.mark.slow
async def test_an_agent_restarted_with_a_long_history_reaps_its_leftovers_and_serves(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # A long TTL: the agent is back long before its old lease could expire.
    overrides = {**FAST, "node_ttl": 15}
    cluster: LocalCluster = await asyncio.to_thread(cluster_factory, 3, agent_overrides=overrides)
    async with ApiClient(cluster.nats_url) as api:
        leader = await api.leader_node()
        victim = next(name for name in cluster.agents if name != leader)
        m = marker()
        left = await api.submit(f"sleep {m}", node=victim)
        await api.wait_for(left, {"RUNNING"})
        await wait_until(lambda: bool(live_processes_with(f"sleep {m}")), 10, "the job's process")
        await _run_binary_jobs(api, 20)
        await _load_history(cluster)
        agent = cluster.agents[victim]
        agent.kill()
        leftovers = {p.pid for p in live_processes_with(f"sleep {m}")}
        assert leftovers, "outside systemd the job outlives its agent"
        await asyncio.to_thread(agent.start)

        def leftovers_gone() -> bool:
            return not leftovers & {p.pid for p in live_processes_with(f"sleep {m}")}

        await wait_until(leftovers_gone, 20, "the leftovers to be killed")
        mark = tmp_path / "served-after-restart"
        served = await api.submit(f"echo served > {mark}", node=victim)
        await wait_until(mark.exists, 20, "a job on the restarted agent")
        assert (await api.wait_for(left))["reason"] == "agent restarted"
        assert (await api.wait_for(served))["state"] == "SUCCEEDED"
        await _assert_index_holds(api, cluster, [left, served])
