"""Synthetic job history for tests and the bench: finished records with binary output."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

from schedagent.core import tail
from schedagent.core.model import Attempt, Job, JobState, new_job_id
from schedagent.core.spec import parse_spec
from schedagent.etcd.store import Op, Put, Store

# Per transaction: well under etcd's 1.5 MiB request and 128 operations.
TXN_BYTES = 1 << 20
TXN_OPS = 100


def finished_record(submitted: float, node: str, tail_bytes: int = 4096) -> Job:
    """A SUCCEEDED `head -c N /dev/urandom` as the worker records it: its output tail is
    the end of N random bytes, base64, bounded as the worker bounds it."""
    spec = parse_spec({"cmd": f"head -c {tail_bytes} /dev/urandom"})
    ended = submitted + 0.05
    attempt = Attempt(n=1, node=node, assigned_at=submitted, started_at=submitted)
    attempt.ended_at, attempt.state, attempt.exit_code = ended, "SUCCEEDED", 0
    attempt.reason = "exit code 0"
    job = Job(id=new_job_id(submitted), spec=spec, state=JobState.SUCCEEDED, submitted_at=submitted)
    job.node, job.exit_code, job.reason = node, 0, "exit code 0"
    kept = tail.keep(os.urandom(tail_bytes), tail_bytes)
    job.output_tail, job.output_tail_base64 = kept.text, kept.base64
    job.updated_at = ended
    job.attempts = [attempt]
    return job


async def load_finished(
    store: Store,
    prefix: str,
    count: int,
    *,
    nodes: Sequence[str] = ("node1",),
    span: float = 3600.0,
    in_flight: int = 4,
) -> int:
    """Write count finished records under prefix (`{p}/done/`, or `{p}/jobs/` as an
    older version kept them), submitted over the last span seconds; bytes written."""
    start = time.time() - span
    written = 0
    limit = asyncio.Semaphore(in_flight)

    async def put(ops: list[Op]) -> None:
        try:
            await store.txn([], ops)
        finally:
            limit.release()

    async with asyncio.TaskGroup() as tg:
        ops: list[Op] = []
        size = 0
        for i in range(count):
            job = finished_record(start + span * i / count, nodes[i % len(nodes)])
            body = job.to_json()
            if ops and (len(ops) == TXN_OPS or size + len(body) > TXN_BYTES):
                await limit.acquire()  # at most in_flight batches in memory
                tg.create_task(put(ops))
                ops, size = [], 0
            ops.append(Put(prefix + job.id, body))
            size += len(body)
            written += len(body)
        if ops:
            await limit.acquire()
            tg.create_task(put(ops))
    return written
