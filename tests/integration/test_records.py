"""Records no agent would write (not JSON objects, not UTF-8, from a newer version) under
every prefix: the cluster keeps scheduling, agents start, and nothing is lost."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import etcdhttp
from apiclient import ApiClient
from helpers import wait_until_served
from schedagent.core import tail
from schedagent.core.model import Attempt, Job, JobState, new_job_id
from schedagent.core.spec import parse_spec
from schedagent.dev.cluster import LocalCluster

FAST = {"node_ttl": 3, "jobs": {"retry_backoff": 0.2, "dispatch_timeout": 2.0}}
TAIL_BYTES = 4096  # output.tail_bytes, the default
# A finished record without its tail: ids, times, a spec, one attempt (~700 bytes).
RECORD_WITHOUT_TAIL = 1200
BAD_VALUES = [b"null", b"[]", b'"text"', b"5", b"\xff\xfe\xfa", b"{", b'{"id": 5}']


def write_bad_records(cluster: LocalCluster) -> list[str]:
    """Bad values under jobs/, done/, nodes/, election/ and placed/; the keys written."""
    p, endpoint = cluster.etcd_prefix, cluster.etcd_endpoint
    keys = []
    for i, value in enumerate(BAD_VALUES):
        written = [
            f"{p}/jobs/{new_job_id()}",
            f"{p}/done/{new_job_id()}",
            f"{p}/nodes/bad{i}",
            f"{p}/election/{i:016x}",  # where a candidate key would be
            f"{p}/election/stray{i}",
            f"{p}/placed/node1/{new_job_id()}",  # a placement of no job, or not a number
        ]
        for key in written:
            etcdhttp.put(endpoint, key, value)
        keys += written
    return keys


async def test_the_cluster_schedules_and_agents_start_past_bad_records(
    cluster_factory: Any,
) -> None:
    # Before: `null` under jobs/ stopped the scheduler and the worker, under nodes/ the
    # scheduler, bytes that are not UTF-8 under election/ every agent at start.
    cluster: LocalCluster = cluster_factory(3, agent_overrides=FAST)
    bad = write_bad_records(cluster)
    async with ApiClient(cluster.nats_url) as api:
        assert await _all_succeed(api, 6)
        # Every agent restarted: each campaigns anew, so the bad election keys are now
        # the oldest under the prefix, where the leader is read from (a value that
        # passes for a node name is deposed as a silent leader).
        for name, agent in cluster.agents.items():
            agent.kill()
            await asyncio.to_thread(agent.start)
            await asyncio.to_thread(cluster.wait_for_nodes, [name])
        await wait_until_served(api.nc, deadline=15)
        assert await _all_succeed(api, 6)
        leader = (await api.call("leader"))["leader"]
        assert leader is not None and leader["node"] in cluster.agents
        nodes = {n["name"] for n in (await api.call("nodes"))["nodes"]}
        assert nodes == set(cluster.agents)
        listed = {j["id"] for j in await api.list_all()}
        assert not listed & {k.rsplit("/", 1)[-1] for k in bad}
    assert all(agent.running for agent in cluster.agents.values())
    for agent in cluster.agents.values():
        log = agent.log_path.read_text()
        # Logged once per key (and incarnation), not on every read or watch event.
        for key in bad:
            assert log.count(f"record at {key}:") <= agent.starts, (agent.name, key)


async def test_a_record_from_a_newer_version_runs_and_keeps_its_fields(
    cluster_factory: Any,
) -> None:
    # Before: a field this version did not know made the record "malformed", so the
    # job was never placed (and an older worker would have dropped it).
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    async with ApiClient(cluster.nats_url) as api:
        now = time.time()
        job = Job(
            id=new_job_id(now),
            spec=parse_spec(api.signed({"cmd": "echo newer"})),
            state=JobState.PENDING,
            submitted_at=now,
            attempt=2,
            updated_at=now,
            attempts=[
                Attempt(
                    n=1,
                    node="gone",
                    assigned_at=now,
                    ended_at=now,
                    state="handed back",
                    reason="agent stopped",
                )
            ],
        )
        record = job.to_dict()
        record["priority"] = 7
        record["spec"]["deadline"] = {"at": "tomorrow"}
        record["attempts"][0]["zone"] = "b"
        key = f"{cluster.etcd_prefix}/jobs/{job.id}"
        etcdhttp.put(cluster.etcd_endpoint, key, json.dumps(record).encode())
        done = await api.wait_for(job.id, deadline=20)
    assert (done["state"], done["output_tail"]) == ("SUCCEEDED", "newer\n"), done
    # Finished, the record moved to done/ (the history split), with its fields.
    done_key = f"{cluster.etcd_prefix}/done/{job.id}"
    stored = json.loads(etcdhttp.get(cluster.etcd_endpoint, done_key) or b"{}")
    assert stored["priority"] == 7
    assert stored["spec"]["deadline"] == {"at": "tomorrow"}
    assert stored["attempts"][0]["zone"] == "b"
    assert [a["state"] for a in stored["attempts"]] == ["handed back", "SUCCEEDED"]


async def test_a_record_keeps_no_more_than_its_tail_of_any_output(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # Before: 4 KiB of random bytes were decoded with replacement characters and
    # escaped, ~10 KB in the record (15.5 KB with the stdlib's escapes), and 4 KiB of
    # NUL bytes (valid UTF-8) ~24 KB; the random bytes could not be read back.
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    sources = {"random": "/dev/urandom", "nul": "/dev/zero"}
    async with ApiClient(cluster.nats_url) as api:
        ids = {
            name: await api.submit(f"head -c {TAIL_BYTES} {source} | tee {tmp_path / name}")
            for name, source in sources.items()
        }
        jobs = await api.wait_all(list(ids.values()), deadline=30)
    for name, job_id in ids.items():
        assert jobs[job_id]["state"] == "SUCCEEDED", jobs[job_id]
        raw = etcdhttp.get(cluster.etcd_endpoint, f"{cluster.etcd_prefix}/done/{job_id}")
        assert raw is not None
        assert len(raw) <= RECORD_WITHOUT_TAIL + TAIL_BYTES, (name, len(raw))
        # What the record keeps is the end of what the job wrote (the file tee made).
        written, kept = (tmp_path / name).read_bytes(), tail.output_bytes(json.loads(raw))
        assert len(written) == TAIL_BYTES and written.endswith(kept), name
        assert len(kept) >= TAIL_BYTES // 6, (name, len(kept))  # 6: "\u0000" per NUL
    assert tail.output_bytes(jobs[ids["random"]]) == kept_random(tmp_path)


def kept_random(tmp_path: Path) -> bytes:
    """The end of the random output a record keeps: 3 KiB, 4 KiB as base64."""
    return (tmp_path / "random").read_bytes()[-(TAIL_BYTES // 4 * 3) :]


async def _all_succeed(api: ApiClient, count: int) -> bool:
    ids = [await api.submit(f"echo ok-{i}") for i in range(count)]
    jobs = await api.wait_all(ids, deadline=40)
    return all(j["state"] == "SUCCEEDED" for j in jobs.values())
