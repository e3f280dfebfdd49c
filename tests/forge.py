"""What a compromised leader can do in a test: write an ASSIGNED record and dispatch it."""

from __future__ import annotations

import json
import time

from apiclient import ApiClient
from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.core.names import Keys
from schedagent.etcd.store import Put, Store


async def dispatch_assigned(
    store: Store, api: ApiClient, job_id: str, spec: JobSpec, node: str = "node1"
) -> str:
    """The job's record written ASSIGNED to node straight into etcd, and its dispatch
    published, with nothing the scheduler checks on the way."""
    now = time.time()
    job = Job(
        id=job_id,
        spec=spec,
        state=JobState.ASSIGNED,
        submitted_at=now,
        node=node,
        attempts=[Attempt(n=1, node=node, assigned_at=now)],
    )
    await store.txn([], [Put(Keys("/schedagent").job(job.id), job.to_json())])
    body = json.dumps({"v": 1, "job": job.id, "attempt": 1}).encode()
    await api.nc.jetstream().publish(f"sched.dispatch.{node}", body)
    return job.id
