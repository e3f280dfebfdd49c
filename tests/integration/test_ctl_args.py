"""schedctl without a cluster: argument errors, missing agents, and a fake agent on real NATS."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from click.testing import CliRunner
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from schedagent.ctl.exits import EXIT_NO_CLUSTER, EXIT_NOT_FOUND, EXIT_USAGE, job_exit_code
from schedagent.ctl.main import cli

NATS_SERVER = "/usr/sbin/nats-server"
JOB = "018f00000000deadbeef"
MISSING = "018f00000000feedf00d"
CTL_DEADLINE = 30.0
CTL = [sys.executable, "-c", "from schedagent.ctl.main import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server is not installed")
    port = free_port()
    cmd = [NATS_SERVER, "-js", "-sd", str(tmp_path), "-a", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: accepts(port) or proc.poll() is not None)
        assert proc.poll() is None, "nats-server exited at start"
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=CTL_DEADLINE)


async def arun_ctl(*args: str) -> tuple[int, str, str]:
    """Runs the CLI without blocking the loop the fake agent answers on."""
    proc = await asyncio.create_subprocess_exec(
        *CTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), CTL_DEADLINE)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--cmd", "true", "--label", "foo"], "expected KEY=VALUE, got 'foo'"),
        (["submit", "--cmd", "true", "--cpus", "0"], "must be a number > 0"),
        (["submit", "--cmd", "true", "--cpus", "abc"], "'abc' is not a number"),
        (["submit", "--cmd", "true", "--cpus", "nan"], "must be a number > 0"),
        (["submit", "--cmd", "true", "--retries", "-1"], "--retries"),
        (["submit", "--cmd", "true", "--env", "1X=y"], "not a valid variable name"),
        (["submit", "--cmd", "true", "--cwd", "rel/dir"], "must be an absolute path"),
        (["submit", "--cmd", "  "], "must be a non-empty command"),
        (["submit"], "give --cmd, or --file"),
        (["submit", "--file", "-", "--cmd", "true"], "not --cmd"),
        (["submit", "--file", "-", "--wait"], "not --wait"),
        (["submit", "--file", "-", "--label", "a=b"], "not --label\n"),
        (["submit", "--file", "-", "--timeout", "5"], "not --timeout"),
        (["submit", "--file", "-", "--after", "0" * 20], "not --after"),
        (["submit", "--cmd", "true", "--after", "abc"], "'abc' is not a job id"),
        (["submit", "--cmd", "true", "--after", f"{'0' * 20},"], "'' is not a job id"),
        (
            ["submit", "--cmd", "true", "--after", ",".join(f"{n:020x}" for n in range(65))],
            "names 65 jobs; at most 64",
        ),
        (["submit", "--file", "/nonexistent/jobs"], "'/nonexistent/jobs': No such file"),
        (["list", "--state", "bogus"], "'bogus' is not one of"),
        (["list", "--limit", "0"], "--limit"),
        (["status", "not-a-job"], "is not a job id"),
        (["--timeout", "-1", "nodes"], "must be a number > 0"),
        (["--prefix", "a b", "nodes"], "is not a NATS subject prefix"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("state", "attempt", "expected"),
    [
        ("SUCCEEDED", {"exit_code": 0}, 0),
        ("FAILED", {"exit_code": 7}, 7),
        ("FAILED", {"exit_code": None, "signal": 9}, 137),
        ("FAILED", {"exit_code": -15}, 143),
        ("FAILED", {"exit_code": None, "signal": None}, 1),
        ("TIMED_OUT", {"exit_code": None, "signal": 15}, 124),
        ("CANCELED", {"exit_code": None, "signal": 15}, 130),
    ],
)
def test_job_exit_code(state: str, attempt: dict[str, Any], expected: int) -> None:
    assert job_exit_code({"state": state, "attempts": [{"n": 1, **attempt}]}) == expected


def test_list_state_is_case_insensitive() -> None:
    # Parsing succeeds and only then the (absent) server is reached: no cluster, not usage.
    port = free_port()
    result = run_ctl("--nats", f"nats://127.0.0.1:{port}", "list", "--state", "running")
    assert result.returncode == EXIT_NO_CLUSTER


def test_no_agent_is_one_line_exit_no_cluster(nats_url: str) -> None:
    result = run_ctl("--nats", nats_url, "nodes")
    assert result.returncode == EXIT_NO_CLUSTER
    assert result.stdout == ""
    assert result.stderr == f"schedctl: no agent answered on {nats_url} within 2 s\n"


def test_explain_without_a_leader_says_so(nats_url: str) -> None:
    result = run_ctl("--nats", nats_url, "--timeout", "0.5", "explain", JOB)
    assert result.returncode == EXIT_NO_CLUSTER
    assert result.stderr == (
        f"schedctl: no leader answered on {nats_url} within 0.5 s "
        "(schedctl leader shows whether one is elected)\n"
    )


def test_no_nats_server_is_one_line_exit_no_cluster() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = run_ctl("--nats", url, "nodes")
    assert result.returncode == EXIT_NO_CLUSTER
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"schedctl: cannot connect to NATS at {url}: ")
    assert "Traceback" not in result.stderr


def record(state: str = "RUNNING", **extra: Any) -> dict[str, Any]:
    spec = {"cmd": "make backup", "cpus": 1.0, "timeout": None, "retries": 1, "env": {}}
    spec |= {"cwd": None, "node": None, "labels": {}, "idempotency_key": "k"}
    attempt = {"n": 1, "node": "n1", "assigned_at": 1790000000.2, "started_at": 1790000000.3}
    attempt |= {"ended_at": None, "state": None, "exit_code": None, "signal": None}
    job = {"v": 1, "id": JOB, "state": state, "attempt": 1, "node": "n1", "pid": 4242}
    job |= {"spec": spec, "submitted_at": 1790000000.1, "updated_at": 1790000000.3}
    job |= {"not_before": 0.0, "cancel_requested": False, "exit_code": None, "reason": None}
    job |= {"output_tail": "line one\nline two\n", "attempts": [attempt]}
    return job | extra


class FakeAgent:
    """Answers `sched.api.*` like an agent would, from a dict of job records."""

    def __init__(self, nc: Nats) -> None:
        self.nc = nc
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pending_reason: str | None = None
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.on_get: Callable[[dict[str, Any]], Any] | None = None
        self.on_submit: Callable[[dict[str, Any]], Any] | None = None

    async def handle(self, msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        body = json.loads(msg.data)
        self.requests.append((verb, body))
        reply = await self.answer(verb, body)
        await msg.respond(json.dumps({"v": 1, **reply}).encode())

    async def answer(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        if verb == "submit":
            job = record("PENDING", attempts=[], node=None, pid=None)
            self.jobs[JOB] = job
            if self.on_submit:
                self.on_submit(job)
            return {"ok": True, "job": job, "created": True}
        found = self.jobs.get(body.get("id", ""))
        if found is None:
            return {"ok": False, "error": f"job {body.get('id')} not found", "code": "not_found"}
        if self.on_get:
            self.on_get(found)
        return {"ok": True, "job": found, "pending_reason": self.pending_reason}


@pytest.fixture
async def agent(nats_url: str) -> AsyncIterator[FakeAgent]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="SCHED_EVENTS", subjects=["sched.events.>"])
    await js.add_stream(name="SCHED_OUTPUT", subjects=["sched.output.>"])
    fake = FakeAgent(nc)
    await nc.subscribe("sched.api.*", queue="schedagent", cb=fake.handle)
    await nc.flush()
    try:
        yield fake
    finally:
        await nc.close()


async def test_status_json_and_human(agent: FakeAgent, nats_url: str) -> None:
    agent.jobs[JOB] = record("PENDING")
    agent.pending_reason = "no node has 2 free cpus"

    rc, out, err = await arun_ctl("--nats", nats_url, "status", "--json", JOB)
    assert (rc, err) == (0, "")
    assert json.loads(out) == {"job": agent.jobs[JOB], "pending_reason": "no node has 2 free cpus"}
    assert agent.requests[-1] == ("get", {"v": 1, "id": JOB})

    rc, out, err = await arun_ctl("--nats", nats_url, "status", JOB)
    assert (rc, err) == (0, "")
    assert "state:     PENDING" in out
    assert "node:      n1" in out
    assert "attempt:   1 (retries allowed: 1)" in out
    assert "pending: no node has 2 free cpus" in out
    assert "ATTEMPT  NODE  STATE" in out
    assert "output tail:\nline one\nline two" in out


async def test_status_not_found_exits_not_found(agent: FakeAgent, nats_url: str) -> None:
    rc, out, err = await arun_ctl("--nats", nats_url, "status", MISSING)
    assert rc == EXIT_NOT_FOUND
    assert out == ""
    assert err == f"schedctl: job {MISSING} not found\n"


async def publish_output(agent: FakeAgent, attempt: int, *chunks: tuple[str, str]) -> None:
    js = agent.nc.jetstream()
    for stream, data in chunks:
        body = {"v": 1, "job": JOB, "attempt": attempt, "stream": stream, "data": data}
        await js.publish(f"sched.output.{JOB}", json.dumps(body).encode())
    eof = {"v": 1, "job": JOB, "attempt": attempt, "eof": True}
    await js.publish(f"sched.output.{JOB}", json.dumps(eof).encode())


async def test_logs_prints_all_attempts(agent: FakeAgent, nats_url: str) -> None:
    agent.jobs[JOB] = record("SUCCEEDED")
    await publish_output(agent, 1, ("stdout", "one\n"), ("stderr", "warn\n"))
    await publish_output(agent, 2, ("stdout", "two\n"))
    rc, out, err = await arun_ctl("--nats", nats_url, "logs", JOB)
    assert (rc, out, err) == (0, "one\ntwo\n", "warn\n")


async def test_logs_falls_back_to_the_tail(agent: FakeAgent, nats_url: str) -> None:
    agent.jobs[JOB] = record("SUCCEEDED")
    rc, out, err = await arun_ctl("--nats", nats_url, "logs", JOB)
    assert (rc, out, err) == (0, "line one\nline two\n", "")


async def test_a_binary_tail_is_written_as_its_bytes_and_not_shown(
    agent: FakeAgent, nats_url: str
) -> None:
    # Before: `logs` wrote output_tail (empty for binary output now) and `status` showed
    # nothing of it; the bytes are in output_tail_base64.
    output = bytes(range(256)) * 4
    encoded = base64.b64encode(output).decode()
    agent.jobs[JOB] = record("SUCCEEDED", output_tail="", output_tail_base64=encoded)
    proc = await asyncio.create_subprocess_exec(
        *CTL, "--nats", nats_url, "logs", JOB, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), CTL_DEADLINE)
    assert (proc.returncode, out) == (0, output)
    rc, text, err = await arun_ctl("--nats", nats_url, "status", JOB)
    assert (rc, err) == (0, "")
    assert "output tail: 1024 bytes, not UTF-8 text (`schedctl logs` writes them)" in text


async def test_submit_wait_streams_output_and_mirrors_exit(agent: FakeAgent, nats_url: str) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def run_job(job: dict[str, Any]) -> None:
        await publish_output(agent, 1, ("stdout", "hello\n"), ("stderr", "oops\n"))
        attempt = record()["attempts"][0] | {"state": "FAILED", "exit_code": 7}
        job |= {"state": "FAILED", "exit_code": 7, "attempts": [attempt]}
        event = {"v": 1, "job": JOB, "state": "FAILED", "attempt": 1, "exit_code": 7}
        await agent.nc.jetstream().publish(f"sched.events.{JOB}", json.dumps(event).encode())

    def late_output(job: dict[str, Any]) -> None:
        # Output of a second attempt lands only after the CLI saw the final record,
        # so the exit waits on its eof.
        if job["state"] == "FAILED" and agent.on_get is not None:
            agent.on_get = None
            job["attempts"].append(job["attempts"][0] | {"n": 2})
            job["attempt"] = 2
            task = asyncio.get_running_loop().create_task(
                publish_output(agent, 2, ("stdout", "late\n"))
            )
            tasks.add(task)

    agent.on_submit = lambda job: tasks.add(asyncio.get_running_loop().create_task(run_job(job)))
    agent.on_get = late_output
    rc, out, err = await arun_ctl("--nats", nats_url, "submit", "--cmd", "false", "--wait")
    assert out == "hello\nlate\n"
    assert err == f"{JOB}\noops\n"
    assert rc == 7
    submits = [body for verb, body in agent.requests if verb == "submit"]
    assert len(submits) == 1
    assert len(submits[0]["spec"]["idempotency_key"]) == 36
