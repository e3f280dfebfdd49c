"""`list` on a long history: newest first, read page by page from etcd, filtered by
state, and continued in another reply where one would outgrow a NATS message."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from apiclient import ApiClient
from schedagent.core.model import Job, JobState, new_job_id
from schedagent.core.names import Keys
from schedagent.core.spec import parse_spec
from schedagent.dev.cluster import LocalCluster
from schedagent.etcd.store import Put, Store

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")
HISTORY = 1500


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(1, base_dir=tmp_path_factory.mktemp("list")) as local:
        yield local


@pytest.fixture(scope="module")
def history(cluster: LocalCluster) -> list[Job]:
    """HISTORY finished jobs, oldest first; only the five oldest FAILED."""
    start = time.time() - 86400
    jobs = []
    for i in range(HISTORY):
        state = JobState.FAILED if i < 5 else JobState.SUCCEEDED
        job = Job(new_job_id(start + i), parse_spec({"cmd": f"echo {i}"}), state, start + i)
        job.output_tail = "x" * 2048  # 1,500 such records are about 3 MB: over 1 MiB
        jobs.append(job)

    async def write() -> None:
        store = Store([cluster.etcd_endpoint])
        await store.connect()
        keys = Keys("/schedagent")
        for first in range(0, HISTORY, 100):
            puts = [Put(keys.job(j.id), j.to_json()) for j in jobs[first : first + 100]]
            assert await store.txn([], puts)
        await store.close()

    asyncio.run(write())
    return jobs


@pytest.fixture
async def api(cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    async with ApiClient(cluster.nats_url) as client:
        yield client


async def test_list_is_newest_first_and_filters_across_pages(
    api: ApiClient, history: list[Job]
) -> None:
    reply = await api.call("list", limit=5)
    assert [j["id"] for j in reply["jobs"]] == [j.id for j in reversed(history[-5:])]
    assert reply["next"] is None
    # The FAILED ones are the oldest: finding them reads every page down to them.
    failed = await api.call("list", state="FAILED", limit=3)
    assert [j["id"] for j in failed["jobs"]] == [history[4].id, history[3].id, history[2].id]


async def test_a_list_too_large_for_one_message_continues_in_the_next(
    api: ApiClient, history: list[Job]
) -> None:
    first = await api.call("list", limit=HISTORY)
    shown = [j["id"] for j in first["jobs"]]
    assert 100 < len(shown) < HISTORY and first["next"] == shown[-1]
    newest_first = [j.id for j in reversed(history)]
    assert shown == newest_first[: len(shown)]
    assert [j["id"] for j in await api.list_all()] == newest_first
    rest = await api.call("list", limit=3, before=first["next"])
    assert [j["id"] for j in rest["jobs"]] == newest_first[len(shown) : len(shown) + 3]
    bad = await api.raw("list", json.dumps({"v": 1, "before": "x"}).encode())
    assert (bad["ok"], bad["error"]) == (False, "before must be a job id")


def test_schedctl_list_shows_all_it_was_asked_for(
    cluster: LocalCluster, history: list[Job]
) -> None:
    env = {**os.environ, "SCHEDCTL_NATS_URL": cluster.nats_url}
    result = subprocess.run(
        [SCHEDCTL, "list", "--limit", str(HISTORY), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert [j["id"] for j in json.loads(result.stdout)["jobs"]] == [j.id for j in reversed(history)]
