"""The core slice on real etcd, NATS and three agent processes: placement, runs, records."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from apiclient import ApiClient
from helpers import live_processes_with, marker, wait_until
from schedagent.dev.cluster import LocalCluster

NODE_CPUS = 2.0
BACKOFF = 0.5
OVERRIDES = {
    "cpus": NODE_CPUS,
    "node_ttl": 4,
    "jobs": {"retry_backoff": BACKOFF, "kill_grace": 1.0, "drain_timeout": 5.0},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(
        3,
        agent_overrides=OVERRIDES,
        per_agent={"node3": {"labels": {"zone": "b", "disk": "ssd"}}},
        base_dir=tmp_path_factory.mktemp("cluster"),
    )
    with local:
        try:
            yield local
        finally:
            for agent in local.agents.values():
                print(f"--- {agent.name} log tail ---\n{agent.log_tail(15)}")


def max_concurrent_cpus(intervals: list[tuple[float, float, float]]) -> float:
    """Peak of the summed CPUs over time, from (start, end, cpus) intervals."""
    points = []
    for start, end, cpus in intervals:
        points.append((start, 1, cpus))
        points.append((end, 0, -cpus))  # ends sort before starts at the same instant
    peak = current = 0.0
    for _, _, delta in sorted(points):
        current += delta
        peak = max(peak, current)
    return peak


MIX = [
    ("echo out-{i}", {}, "SUCCEEDED", 0, "out-{i}\n"),
    ("exit 3", {}, "FAILED", 3, ""),
    ("sleep 0.2; echo slept-{i}", {}, "SUCCEEDED", 0, "slept-{i}\n"),
    ("sleep 0.1; echo big-{i} >&2", {"cpus": 2}, "SUCCEEDED", 0, "big-{i}\n"),
]


async def test_300_mixed_jobs_end_right_and_never_overcommit_a_node(api: ApiClient) -> None:
    expected: dict[str, tuple[str, int, str, float]] = {}
    submits = []
    for i in range(300):
        cmd, spec, state, code, output = MIX[i % len(MIX)]
        submits.append(
            (cmd.format(i=i), spec, (state, code, output.format(i=i), spec.get("cpus", 1)))
        )
    for start in range(0, len(submits), 50):
        batch = submits[start : start + 50]
        ids = await asyncio.gather(*(api.submit(cmd, **spec) for cmd, spec, _ in batch))
        for job_id, (_, _, want) in zip(ids, batch, strict=True):
            expected[job_id] = want
    jobs = await api.wait_all(list(expected), deadline=180)

    per_node: dict[str, list[tuple[float, float, float]]] = {}
    for job_id, (state, code, output, cpus) in expected.items():
        job = jobs[job_id]
        assert (job["state"], job["exit_code"], job["output_tail"]) == (state, code, output), job
        assert len(job["attempts"]) == 1
        attempt = job["attempts"][0]
        assert attempt["started_at"] <= attempt["ended_at"]
        per_node.setdefault(attempt["node"], []).append(
            (attempt["started_at"], attempt["ended_at"], cpus)
        )
    assert set(per_node) == {"node1", "node2", "node3"}, "work should spread over all nodes"
    for node, intervals in per_node.items():
        assert max_concurrent_cpus(intervals) <= NODE_CPUS, f"{node} overcommitted"


async def test_cancel_running_job_kills_its_whole_group(api: ApiClient) -> None:
    m = marker()
    job_id = await api.submit(f"sleep {m} & sleep {m}")
    await api.wait_for(job_id, {"RUNNING"})
    await wait_until(lambda: len(live_processes_with(f"sleep {m}")) >= 2, 10, "both sleeps")
    await api.call("cancel", id=job_id)
    job = await api.wait_for(job_id, deadline=15)
    assert job["state"] == "CANCELED"
    await wait_until(lambda: not live_processes_with(f"sleep {m}"), 10, "the sleeps to die")


async def test_cancel_pending_job_is_immediate(api: ApiClient) -> None:
    job_id = await api.submit("true", node="no-such-node")
    reply = await api.call("cancel", id=job_id)
    assert reply["job"]["state"] == "CANCELED"


async def test_timeout_kills_group_and_records_timed_out(api: ApiClient) -> None:
    m = marker()
    job_id = await api.submit(f"sleep {m} & sleep {m}", timeout=1)
    job = await api.wait_for(job_id, deadline=20)
    assert job["state"] == "TIMED_OUT"
    assert job["reason"] == "timed out after 1s"
    attempt = job["attempts"][0]
    assert 1.0 <= attempt["ended_at"] - attempt["started_at"] < 10
    await wait_until(lambda: not live_processes_with(f"sleep {m}"), 10, "the sleeps to die")


async def test_failing_job_with_two_retries_records_three_attempts_with_backoff(
    api: ApiClient,
) -> None:
    job_id = await api.submit("echo try $SCHED_ATTEMPT; exit 5", retries=2)
    job = await api.wait_for(job_id, deadline=30)
    assert job["state"] == "FAILED" and job["exit_code"] == 5
    attempts = job["attempts"]
    assert [a["n"] for a in attempts] == [1, 2, 3]
    assert all(a["state"] == "FAILED" and a["exit_code"] == 5 for a in attempts)
    for n in (1, 2):
        gap = attempts[n]["started_at"] - attempts[n - 1]["ended_at"]
        assert gap >= BACKOFF * 2 ** (n - 1), (
            f"attempt {n + 1} started {gap:.2f}s after the failure"
        )
    assert job["output_tail"] == "try 3\n"


async def test_same_idempotency_key_returns_the_same_job(api: ApiClient) -> None:
    key = f"backup-{uuid.uuid4()}"
    first = await api.call("submit", spec={"cmd": "echo once", "idempotency_key": key})
    second = await api.call("submit", spec={"cmd": "echo once", "idempotency_key": key})
    assert first["created"] is True and second["created"] is False
    assert first["job"]["id"] == second["job"]["id"]
    jobs = await api.list_all()
    assert sum(1 for j in jobs if j["spec"]["idempotency_key"] == key) == 1


async def test_node_and_label_constraints_are_honoured(api: ApiClient) -> None:
    on_node2 = [await api.submit("hostname", node="node2") for _ in range(4)]
    on_ssd = [await api.submit("true", labels={"disk": "ssd"}) for _ in range(4)]
    for job_id in on_node2:
        assert (await api.wait_for(job_id))["attempts"][0]["node"] == "node2"
    for job_id in on_ssd:
        assert (await api.wait_for(job_id))["attempts"][0]["node"] == "node3"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"node": "nowhere"}, "no node matches the constraints (node=nowhere)"),
        ({"labels": {"gpu": "yes"}}, "no node matches the constraints (label gpu=yes)"),
        ({"cpus": 64}, "needs 64 CPUs but the largest matching node has 2"),
    ],
)
async def test_unplaceable_job_stays_pending_and_says_why(
    api: ApiClient, spec: dict[str, Any], why: str
) -> None:
    job_id = await api.submit("true", **spec)
    # Give the leader a scheduling pass: a later job that can run has run by then.
    await api.wait_for(await api.submit("true"))
    reply = await api.call("get", id=job_id)
    assert reply["job"]["state"] == "PENDING"
    assert reply["pending_reason"] == why
    await api.call("cancel", id=job_id)


async def test_malformed_api_requests_get_error_replies(api: ApiClient) -> None:
    cases = [
        ("submit", b"{not json", "bad_request"),
        ("submit", b"[1, 2]", "bad_request"),
        ("submit", json.dumps({"v": 1, "spec": {"cmd": ""}}).encode(), "bad_request"),
        ("get", json.dumps({"v": 1, "id": "../../etc"}).encode(), "bad_request"),
        ("get", json.dumps({"v": 1, "id": "0" * 20}).encode(), "not_found"),
        ("explode", b"{}", "bad_request"),
    ]
    for verb, data, code in cases:
        reply = await api.raw(verb, data)
        assert reply["ok"] is False and reply["code"] == code, (verb, data, reply)
        assert reply["error"]


async def test_garbage_dispatch_is_dropped_and_the_agent_keeps_serving(
    api: ApiClient, cluster: LocalCluster
) -> None:
    js = api.nc.jetstream()
    for garbage in (b"\xff\xfe", b"{}", b'{"job": "x", "attempt": 1}', b'{"job": 5}', b"[]"):
        await js.publish("sched.dispatch.node1", garbage)
    # A well-formed dispatch for a job that is not this node's current attempt.
    other = await api.submit("true", node="node2")
    await api.wait_for(other)
    await js.publish(
        "sched.dispatch.node1", json.dumps({"v": 1, "job": other, "attempt": 1}).encode()
    )
    job = await api.wait_for(await api.submit("echo still-here", node="node1"))
    assert job["state"] == "SUCCEEDED" and job["output_tail"] == "still-here\n"
    assert (await api.get(other))["attempts"][0]["node"] == "node2"
    assert cluster.agents["node1"].running
    assert "dropping malformed dispatch" in cluster.agents["node1"].log_tail(200)


async def test_nodes_and_leader(api: ApiClient) -> None:
    end = time.monotonic() + 15  # the first election may still be under way
    while (await api.call("leader"))["leader"] is None and time.monotonic() < end:
        await asyncio.sleep(0.1)
    nodes = (await api.call("nodes"))["nodes"]
    assert [n["name"] for n in nodes] == ["node1", "node2", "node3"]
    assert all(n["cpus"] == NODE_CPUS for n in nodes)
    assert sum(1 for n in nodes if n["leader"]) == 1
    leader = (await api.call("leader"))["leader"]
    assert leader["node"] in {"node1", "node2", "node3"} and leader["token"] > 0


async def test_output_is_streamed_on_the_output_subject(api: ApiClient) -> None:
    job_id = await api.submit("for i in 1 2 3; do echo line-$i; done; echo oops >&2")
    await api.wait_for(job_id)
    js = api.nc.jetstream()
    sub = await js.subscribe(f"sched.output.{job_id}", ordered_consumer=True)
    chunks: list[dict[str, Any]] = []
    while not chunks or not chunks[-1].get("eof"):
        msg = await sub.next_msg(timeout=5)
        chunks.append(json.loads(msg.data))
    await sub.unsubscribe()
    stdout = "".join(c["data"] for c in chunks if c.get("stream") == "stdout")
    stderr = "".join(c["data"] for c in chunks if c.get("stream") == "stderr")
    assert (stdout, stderr) == ("line-1\nline-2\nline-3\n", "oops\n")


async def test_state_changes_are_published_as_events(api: ApiClient) -> None:
    nc = await nats.connect(api.url)
    try:
        job_id = await api.submit("true")
        await api.wait_for(job_id)
        sub = await nc.jetstream().subscribe(f"sched.events.{job_id}", ordered_consumer=True)
        lifecycle = ["PENDING", "ASSIGNED", "RUNNING", "SUCCEEDED"]
        states: list[str] = []
        # Each agent publishes its own transitions (the API PENDING, the leader
        # ASSIGNED, the worker the rest), so the stream has them in the order they
        # reached the server: a job that runs at once may show ASSIGNED before PENDING.
        while len(states) < len(lifecycle):
            states.append(json.loads((await sub.next_msg(timeout=5)).data)["state"])
        assert sorted(states, key=lifecycle.index) == lifecycle, states
    finally:
        await nc.close()
