"""JobStore.create_many on a real etcd: as few transactions as etcd's limits allow, ids in
the order of the specs, and idempotency keys that hold against what etcd already has."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import AsyncIterator

import pytest

from schedagent.core.model import JobState
from schedagent.core.names import Keys
from schedagent.core.spec import parse_spec
from schedagent.dev.procs import EtcdServer
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Store

KEYS = Keys("/schedagent")
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TXN_RE = re.compile(r'^grpc_server_handled_total\{.*grpc_method="Txn".*\} (\S+)$', re.M)


@pytest.fixture
async def jobs(etcd_server: EtcdServer) -> AsyncIterator[JobStore]:
    store = Store([etcd_server.url])
    await store.connect()
    yield JobStore(store, KEYS)
    await store.close()


def txns(etcd: EtcdServer) -> int:
    """Transactions etcd has handled, from its own metrics."""
    with _HTTP.open(f"{etcd.url}/metrics", timeout=5) as resp:
        return sum(int(float(n)) for n in TXN_RE.findall(resp.read().decode()))


async def test_630_keyed_jobs_take_15_transactions_and_keep_their_order(
    jobs: JobStore, etcd_server: EtcdServer
) -> None:
    specs = [parse_spec({"cmd": f"echo {n}", "idempotency_key": f"k{n}"}) for n in range(630)]
    before = txns(etcd_server)
    made = await jobs.create_many(specs)
    # 42 jobs a transaction: 3 compares each (absent live, absent finished, key absent).
    assert txns(etcd_server) - before == 15
    assert all(created for _, created in made)
    ids = [job.id for job, _ in made]
    assert ids == sorted(ids) and len(set(ids)) == 630
    stored, _ = await jobs.all()
    assert sorted(job.spec.cmd for job, _ in stored) == sorted(s.cmd for s in specs)
    assert {job.state for job, _ in stored} == {JobState.PENDING}


async def test_unkeyed_jobs_fill_64_to_a_transaction(
    jobs: JobStore, etcd_server: EtcdServer
) -> None:
    before = txns(etcd_server)
    await jobs.create_many([parse_spec({"cmd": "true"}) for _ in range(300)])
    assert txns(etcd_server) - before == 5


async def test_a_key_already_in_etcd_returns_its_job_and_the_rest_are_created(
    jobs: JobStore,
) -> None:
    earlier, _ = await jobs.create(parse_spec({"cmd": "echo old", "idempotency_key": "k5"}))
    specs = [parse_spec({"cmd": f"echo {n}", "idempotency_key": f"k{n}"}) for n in range(10)]
    specs.append(parse_spec({"cmd": "echo again", "idempotency_key": "k2"}))
    made = await jobs.create_many(specs)
    assert made[5] == (earlier, False)
    assert made[10][0].id == made[2][0].id and made[10][1] is False
    assert [created for _, created in made] == [True] * 5 + [False] + [True] * 4 + [False]
    stored, _ = await jobs.all()
    assert len(stored) == 10  # the old one and nine new: no job twice for a key


def reads_and_txns(etcd: EtcdServer) -> int:
    with _HTTP.open(f"{etcd.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = r'^grpc_server_handled_total\{.*grpc_method="(?:Txn|Range)".*\} (\S+)$'
    return sum(int(float(n)) for n in re.findall(pattern, text, re.M))


async def test_a_batch_sent_again_finds_its_jobs_in_bulk(
    jobs: JobStore, etcd_server: EtcdServer
) -> None:
    specs = [parse_spec({"cmd": f"echo {n}", "idempotency_key": f"r{n}"}) for n in range(1000)]
    first = await jobs.create_many(specs)
    before = reads_and_txns(etcd_server)
    again = await jobs.create_many(specs)  # a client that timed out and resent it
    calls = reads_and_txns(etcd_server) - before
    assert [(job.id, created) for job, created in again] == [(j.id, False) for j, _ in first]
    # Three calls a chunk of 42 (the failed transaction, its keys, their jobs): 72, where
    # creating them one by one took three a spec.
    assert calls <= 3 * 24, calls
    stored, _ = await jobs.all()
    assert len(stored) == 1000
