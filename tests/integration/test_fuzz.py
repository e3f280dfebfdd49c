"""10,000+ generated malformed requests and messages at a running agent: every request
gets an error reply, nothing crashes or hangs, and the agent still runs jobs after."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiclient import ApiClient
from schedagent.dev.cluster import LocalCluster

VERBS = ["submit", "submit_many", "get", "list", "cancel", "nodes", "leader"]
EXAMPLES = 10_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
spec_fields = st.sampled_from(
    ["cmd", "cpus", "timeout", "retries", "env", "cwd", "node", "labels", "user", "signature", "x"]
)
# Specs that look almost right: the checks that bite are the subtle ones.
near_specs = st.dictionaries(spec_fields, json_values, max_size=6)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_specs.map(lambda s: json.dumps({"v": 1, "spec": s}).encode()),
    st.lists(near_specs | json_values, max_size=5).map(
        lambda specs: json.dumps({"v": 1, "specs": specs}).encode()
    ),
    st.dictionaries(st.sampled_from(["id", "state", "limit", "v"]), json_values, max_size=3).map(
        lambda b: json.dumps(b).encode()
    ),
)


class Sender:
    """A NATS connection on its own loop thread, so hypothesis can stay synchronous."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc: Any = self.run(nats.connect(url))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def request(self, subject: str, data: bytes) -> dict[str, Any]:
        reply = self.run(self.nc.request(subject, data, timeout=10))
        return dict(json.loads(reply.data))

    def publish(self, subject: str, data: bytes) -> None:
        self.run(self.nc.publish(subject, data))

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # One agent: every request reaches the same process, the one that must survive.
    with LocalCluster(1, base_dir=tmp_path_factory.mktemp("fuzz")) as local:
        yield local


@pytest.fixture(scope="module")
def sender(cluster: LocalCluster) -> Iterator[Sender]:
    client = Sender(cluster.nats_url)
    yield client
    client.close()


def is_valid_read(verb: str, body: bytes) -> bool:
    """Requests that are, by chance, well-formed reads: those may answer ok."""
    try:
        parsed = json.loads(body) if body.strip() else {}
    except ValueError:
        return False
    return verb in ("nodes", "leader") or (verb == "list" and isinstance(parsed, dict))


# Ten thousand round trips: a minute on a quiet machine, over the suite's 300 s default
# once under a loaded CI run's.
@pytest.mark.timeout(900)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(verb=st.sampled_from(VERBS), body=bodies)
def test_malformed_requests_all_get_an_error_reply(sender: Sender, verb: str, body: bytes) -> None:
    reply = sender.request(f"sched.api.{verb}", body)
    if reply.get("ok"):
        assert verb != "submit", f"a malformed submit was accepted: {body!r}"
        assert verb != "cancel", f"an unsigned cancel was accepted: {body!r}"
        if verb == "submit_many":  # refused spec by spec: not one job from any of them
            assert reply["jobs"] and all("error" in job for job in reply["jobs"]), reply
            return
        assert is_valid_read(verb, body) or verb == "get", (verb, body, reply)
        return
    assert reply["code"] in ("bad_request", "not_found", "unavailable"), reply
    assert reply["error"] and "\n" not in reply["error"]


@settings(max_examples=2_000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    subject=st.sampled_from(
        ["sched.dispatch.node1", "sched.control.node1", "sched.leader", "sched.api.bogus"]
    ),
    body=bodies,
)
def test_garbage_on_every_subject_is_dropped(sender: Sender, subject: str, body: bytes) -> None:
    sender.publish(subject, body)


async def test_the_agent_still_serves_jobs_after(cluster: LocalCluster) -> None:
    agent = cluster.agents["node1"]
    assert agent.running, agent.log_tail(30)
    async with ApiClient(cluster.nats_url) as api:
        job = await api.wait_for(await api.submit("echo still-serving"), deadline=30)
    assert (job["state"], job["output_tail"]) == ("SUCCEEDED", "still-serving\n")
    assert "Traceback" not in agent.log_tail(2000)
