"""The worker's start of a dispatch over an in-memory etcd: what it reads, what it writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from schedagent.config import SecurityConfig
from schedagent.core import transitions, wire
from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.core.names import Keys
from schedagent.core.signing import SigningKey, public_text
from schedagent.daemon.gate import Gate
from schedagent.daemon.starter import Refusal, Stale, Started, Starter
from schedagent.dev.memstore import MemStore
from schedagent.etcd.batcher import TxnBatcher
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import KV, Compare, Op

NODE = "n1"
LEASE = 77
KEY = SigningKey.generate()


class CountingStore(MemStore):
    """MemStore that counts what reaches etcd: transactions and plain reads."""

    def __init__(self) -> None:
        super().__init__()
        self.txns = 0
        self.reads = 0

    async def txn_revision(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> int:
        await asyncio.sleep(0)  # a round trip: others may queue meanwhile
        self.txns += 1
        return await super().txn_revision(compares, success, failure)

    async def get_first(self, keys: Sequence[str]) -> KV | None:
        self.reads += 1
        return await super().get_first(keys)


class Cluster:
    def __init__(self) -> None:
        self.store = CountingStore()
        self.jobs = JobStore(self.store, Keys("/t"))
        security = SecurityConfig(trusted_keys=(public_text(KEY.public),))
        gate = Gate(lambda: security, self.store, self.jobs.keys)
        self.starter = Starter(NODE, self.jobs, gate, TxnBatcher(self.store), lambda: LEASE)

    def placed(self, n: int, cmd: str = "true", earlier: bool = False) -> tuple[Job, int]:
        """A signed job ASSIGNED to NODE as the leader writes it: (record, revision)."""
        spec = JobSpec(cmd=cmd, signature=KEY.sign(JobSpec(cmd=cmd).to_dict()).to_dict())
        job = Job(f"{n:020x}", spec, JobState.PENDING, time.time())
        if earlier:  # a first attempt ran and was handed back
            job.attempts.append(Attempt(n=1, node=NODE, assigned_at=1.0, started_at=time.time()))
            job.attempt = 2
        placed = transitions.assign(job, NODE, time.time())
        assert placed is not None
        return placed, self.store.put(self.jobs.keys.job(placed.id), placed.to_json())

    def record(self, job_id: str) -> Job:
        kv = self.store.data.get(self.jobs.keys.job(job_id)) or self.store.data.get(
            self.jobs.keys.done_job(job_id)
        )
        assert kv is not None
        return Job.from_json(kv.value)

    def nonce_key(self, job: Job) -> str:
        assert job.spec.signature is not None
        return self.jobs.keys.nonce(str(job.spec.signature["nonce"]))


def carried(job: Job, revision: int) -> wire.Dispatch:
    """The dispatch the leader sends, through the wire as it goes."""
    return wire.parse_dispatch(wire.dispatch(job.id, job.attempt, job.to_json(), revision))


async def test_a_dispatch_carrying_the_record_starts_in_one_transaction_reading_nothing() -> None:
    cluster = Cluster()
    job, revision = cluster.placed(1)
    outcome = await cluster.starter.start(carried(job, revision))
    assert isinstance(outcome, Started)
    stored = cluster.record(job.id)
    assert (stored.state, stored.current_attempt().lease) == (JobState.RUNNING, LEASE)  # type: ignore[union-attr]
    assert cluster.store.data[cluster.nonce_key(job)].value == job.id.encode()
    assert (cluster.store.txns, cluster.store.reads) == (1, 0)


async def test_the_starts_of_a_fetched_batch_share_one_transaction() -> None:
    cluster = Cluster()
    placed = [cluster.placed(n) for n in range(16)]
    outcomes = await asyncio.gather(*(cluster.starter.start(carried(j, r)) for j, r in placed))
    assert all(isinstance(o, Started) for o in outcomes)
    assert all(cluster.record(job.id).state == JobState.RUNNING for job, _ in placed)
    assert (cluster.store.txns, cluster.store.reads) == (1, 0)


async def test_a_dispatch_whose_record_was_altered_starts_what_etcd_holds() -> None:
    # A dispatch is no proof of the record: one forged on NATS with the right revision
    # (and a valid signature: what the signature does not cover is altered) must not
    # get its version written to etcd nor started.
    cluster = Cluster()
    job, revision = cluster.placed(1)
    forged = job.clone()
    forged.reason, forged.output_tail = "forged", "forged"
    outcome = await cluster.starter.start(carried(forged, revision))
    assert isinstance(outcome, Started)
    stored = cluster.record(job.id)
    assert (stored.reason, stored.output_tail) == (None, "")
    assert (outcome.job.reason, outcome.job.output_tail) == (None, "")


async def test_a_dispatch_with_a_forged_unsigned_record_does_not_fail_the_real_job() -> None:
    # Refused on what it carried, the job would end FAILED for what someone else sent.
    cluster = Cluster()
    job, revision = cluster.placed(1)
    forged = job.clone()
    forged.spec = JobSpec(cmd=job.spec.cmd)
    outcome = await cluster.starter.start(carried(forged, revision))
    assert isinstance(outcome, Started) and outcome.job.spec.signature == job.spec.signature


async def test_a_dispatch_behind_the_record_reads_it_in_the_failed_start_and_decides_again() -> (
    None
):
    cluster = Cluster()
    job, revision = cluster.placed(1)
    newer = cluster.store.put(cluster.jobs.keys.job(job.id), job.to_json())  # same job, rewritten
    outcome = await cluster.starter.start(carried(job, revision))
    assert isinstance(outcome, Started) and outcome.revision > newer
    assert (cluster.store.txns, cluster.store.reads) == (2, 0)


async def test_a_job_canceled_before_its_start_is_not_started() -> None:
    cluster = Cluster()
    job, revision = cluster.placed(1)
    canceled = transitions.cancel(job.clone(), time.time())
    assert canceled is not None
    assert await cluster.jobs.write(canceled, revision)  # moves it to done/
    outcome = await cluster.starter.start(carried(job, revision))
    assert isinstance(outcome, Stale)
    assert cluster.record(job.id).state == JobState.CANCELED
    assert cluster.nonce_key(job) not in cluster.store.data


async def test_a_nonce_held_by_another_job_is_refused_as_a_replay() -> None:
    cluster = Cluster()
    job, revision = cluster.placed(1)
    cluster.store.put(cluster.nonce_key(job), b"00000000000000000009")
    outcome = await cluster.starter.start(carried(job, revision))
    assert isinstance(outcome, Refusal)
    assert outcome.reason.startswith("signature rejected: replayed")
    assert cluster.record(job.id).state == JobState.ASSIGNED  # the worker records the refusal


async def test_a_later_attempt_starts_on_the_nonce_its_job_holds_or_claims_it_again() -> None:
    cluster = Cluster()
    holds, holds_revision = cluster.placed(1, earlier=True)
    cluster.store.put(cluster.nonce_key(holds), holds.id.encode())
    expired, expired_revision = cluster.placed(2, earlier=True)  # its nonce's lease ran out
    fresh, fresh_revision = cluster.placed(3)
    cluster.store.put(cluster.nonce_key(fresh), fresh.id.encode())  # claimed, start failed
    for job, revision in ((holds, holds_revision), (expired, expired_revision)):
        assert isinstance(await cluster.starter.start(carried(job, revision)), Started)
    fresh_revision = cluster.store.data[cluster.jobs.keys.job(fresh.id)].mod_revision
    assert isinstance(await cluster.starter.start(carried(fresh, fresh_revision)), Started)
    for job in (holds, expired, fresh):
        assert cluster.store.data[cluster.nonce_key(job)].value == job.id.encode()
        assert cluster.record(job.id).state == JobState.RUNNING


async def test_a_dispatch_without_a_record_reads_it() -> None:
    # What an older leader sends.
    cluster = Cluster()
    job, _ = cluster.placed(1)
    outcome = await cluster.starter.start(wire.Dispatch(job.id, job.attempt))
    assert isinstance(outcome, Started)
    assert (cluster.store.txns, cluster.store.reads) == (1, 1)


async def test_a_dispatch_for_another_node_is_stale() -> None:
    cluster = Cluster()
    job, revision = cluster.placed(1)
    other = Starter("n2", cluster.jobs, cluster.starter.gate, cluster.starter.batcher, lambda: 1)
    assert isinstance(await other.start(carried(job, revision)), Stale)
    assert cluster.record(job.id).state == JobState.ASSIGNED
