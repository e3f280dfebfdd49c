"""Every NATS message body, built and parsed in one place: the protocol as code."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from schedagent.core.explain import Explanation, NodeVerdict
from schedagent.core.model import JOB_ID_RE, SCHEMA_VERSION, Job
from schedagent.errors import WireError

# Every body is a JSON object with "v": VERSION. A reader ignores fields it does not
# know, so a newer sender can add some without breaking an older reader.
VERSION = SCHEMA_VERSION
MAX_REQUEST_BYTES = 1024 * 1024
OUTPUT_STREAMS = ("stdout", "stderr")
Body = dict[str, Any]


def encode(body: Mapping[str, Any]) -> bytes:
    """Compact JSON with the protocol version in front."""
    return json.dumps({"v": VERSION, **body}, separators=(",", ":")).encode()


def decode(data: bytes, what: str) -> Body:
    """A JSON object, or WireError naming what was expected."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise WireError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError(f"{what} must be a JSON object")
    return body


def _job_id(body: Body, what: str) -> str:
    job_id = body.get("job")
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise WireError(f"{what}: job must be a job id, got {job_id!r}")
    return job_id


def _attempt(body: Body, what: str) -> int:
    attempt = body.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise WireError(f"{what}: attempt must be an integer >= 1, got {attempt!r}")
    return attempt


# {np}.dispatch.<node>: the leader tells a node to start an attempt. It sends the record
# as it wrote it (its exact bytes) and the revision it wrote it at, so the worker need
# not read it back: its start compares both, and reads only when they no longer hold.

# A record larger than this (a spec near the request limit) goes without: read instead.
MAX_DISPATCH_RECORD = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Dispatch:
    job: str
    attempt: int
    record: bytes | None = None  # the job record's bytes as stored at `revision`
    revision: int = 0


def dispatch(job_id: str, attempt: int, record: bytes | None = None, revision: int = 0) -> bytes:
    body: Body = {"job": job_id, "attempt": attempt}
    if record is not None and revision > 0 and len(record) <= MAX_DISPATCH_RECORD:
        body["record"] = record.decode()
        body["revision"] = revision
    return encode(body)


def parse_dispatch(data: bytes) -> Dispatch:
    """The dispatch; a record or revision that is not well formed is left out (the
    worker reads the record then), since the job and attempt alone are a dispatch."""
    body = decode(data, "dispatch")
    job_id, attempt = _job_id(body, "dispatch"), _attempt(body, "dispatch")
    record, revision = body.get("record"), body.get("revision")
    if not isinstance(record, str) or isinstance(revision, bool) or not isinstance(revision, int):
        return Dispatch(job_id, attempt)
    if revision < 1:
        return Dispatch(job_id, attempt)
    return Dispatch(job_id, attempt, record.encode(), revision)


# {np}.control.<node>: an agent tells the node running an attempt to stop it.


@dataclasses.dataclass(frozen=True)
class Control:
    action: str
    job: str
    attempt: int | None


def cancel(job_id: str, attempt: int) -> bytes:
    return encode({"action": "cancel", "job": job_id, "attempt": attempt})


def parse_control(data: bytes) -> Control:
    body = decode(data, "control message")
    action = body.get("action")
    if not isinstance(action, str):
        raise WireError(f"control message: action must be a string, got {action!r}")
    attempt = body.get("attempt")
    return Control(
        action,
        _job_id(body, "control message"),
        attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
    )


# {np}.events.<job>: a state change, for followers; etcd holds the truth.


@dataclasses.dataclass(frozen=True)
class Event:
    job: str
    state: str
    attempt: int
    node: str | None
    exit_code: int | None
    reason: str | None
    time: float


def event(job: Job, now: float) -> bytes:
    return encode(
        {
            "job": job.id,
            "state": str(job.state),
            "attempt": job.attempt,
            "node": job.node,
            "exit_code": job.exit_code,
            "reason": job.reason,
            "time": now,
        }
    )


def parse_event(data: bytes) -> Event:
    body = decode(data, "event")
    state = body.get("state")
    if not isinstance(state, str):
        raise WireError(f"event: state must be a string, got {state!r}")
    when = body.get("time")
    return Event(
        job=_job_id(body, "event"),
        state=state,
        attempt=_attempt(body, "event"),
        node=_optional(body, "node", str),
        exit_code=_optional(body, "exit_code", int),
        reason=_optional(body, "reason", str),
        time=float(when) if isinstance(when, int | float) else 0.0,
    )


def _optional(body: Body, name: str, kind: type[Any]) -> Any:
    value = body.get(name)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


# {np}.output.<job>: a job's output as it comes, then one end mark per attempt.


@dataclasses.dataclass(frozen=True)
class OutputChunk:
    job: str
    attempt: int
    stream: str
    data: str


@dataclasses.dataclass(frozen=True)
class OutputEnd:
    job: str
    attempt: int


def output_chunk(job_id: str, attempt: int, stream: str, text: str) -> bytes:
    return encode({"job": job_id, "attempt": attempt, "stream": stream, "data": text})


def output_end(job_id: str, attempt: int) -> bytes:
    return encode({"job": job_id, "attempt": attempt, "eof": True})


def parse_output(data: bytes) -> OutputChunk | OutputEnd:
    body = decode(data, "output message")
    job_id = _job_id(body, "output message")
    if body.get("eof"):
        attempt = body.get("attempt")
        return OutputEnd(job_id, attempt if isinstance(attempt, int) else 0)
    text = body.get("data")
    if not isinstance(text, str):
        raise WireError("output message: data must be a string")
    stream = body.get("stream")
    return OutputChunk(job_id, _attempt(body, "output message"), str(stream), text)


# {np}.leader: the leader's heartbeat, every LeaderHeartbeat.INTERVAL.


@dataclasses.dataclass(frozen=True)
class Beat:
    node: str
    token: int


def beat(node: str, token: int) -> bytes:
    return encode({"node": node, "token": token})


def parse_beat(data: bytes) -> Beat:
    body = decode(data, "leader heartbeat")
    token = body.get("token")
    if isinstance(token, bool) or not isinstance(token, int):
        raise WireError(f"leader heartbeat: token must be an integer, got {token!r}")
    return Beat(str(body.get("node")), token)


# {np}.reach: whether an agent reaches etcd. An agent cut off from etcd asks (the
# message carries a reply inbox), every agent answers to that inbox, and an agent whose
# answer changes says so unasked (docs/semantics.md, "Fenced execution").


@dataclasses.dataclass(frozen=True)
class Reach:
    node: str
    reaching: bool
    age: float | None  # seconds since its last successful lease refresh; None: never


def reach(node: str, reaching: bool, age: float | None) -> bytes:
    return encode({"node": node, "reaching": reaching, "age": age})


def parse_reach(data: bytes) -> Reach:
    body = decode(data, "etcd reach message")
    node, reaching, age = body.get("node"), body.get("reaching"), body.get("age")
    if not isinstance(node, str) or not node:
        raise WireError(f"etcd reach message: node must be a name, got {node!r}")
    if not isinstance(reaching, bool):
        raise WireError(f"etcd reach message: reaching must be true or false, got {reaching!r}")
    if age is not None and (isinstance(age, bool) or not isinstance(age, int | float)):
        raise WireError(f"etcd reach message: age must be a number or null, got {age!r}")
    return Reach(node, reaching, None if age is None else float(age))


# {np}.api.<verb>: a request from schedctl (or any client) and the agent's reply.


def request(body: Mapping[str, Any] | None = None) -> bytes:
    return encode(body or {})


def parse_request(data: bytes) -> Body:
    """The request object ({} for an empty body); WireError (a SpecError) if malformed."""
    if len(data) > MAX_REQUEST_BYTES:
        raise WireError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    if not data.strip():
        return {}
    return decode(data, "request")


def ok(fields: Mapping[str, Any]) -> Body:
    return {"ok": True, **fields}


def error(code: str, message: str) -> Body:
    """code: bad_request, not_found, conflict, unavailable or internal."""
    return {"ok": False, "error": message, "code": code}


def reply(body: Body) -> bytes:
    return encode(body)


def parse_reply(data: bytes) -> Body:
    """The reply object, ok or not; WireError if it is not a JSON object."""
    return decode(data, "reply")


# {np}.api.submit_many: many specs in one request; one result per spec, in order.

MAX_SUBMIT_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class Submitted:
    """One spec's fate: its job (and whether this request created it), or why not."""

    index: int
    job: str | None = None
    created: bool = False
    error: str | None = None


def submit_many(specs: Sequence[Mapping[str, Any]]) -> bytes:
    return request({"specs": list(specs)})


def parse_submit_many(body: Body) -> list[object]:
    """The raw specs of a submit_many request (each is checked on its own later)."""
    specs = body.get("specs")
    if not isinstance(specs, list) or not specs:
        raise WireError("specs must be a non-empty list of job specs")
    if len(specs) > MAX_SUBMIT_BATCH:
        raise WireError(f"at most {MAX_SUBMIT_BATCH} specs per request, got {len(specs)}")
    return specs


def submitted(results: Sequence[Submitted]) -> Body:
    """The reply fields: {"id", "created"} or {"error", "index"} per spec, in order."""
    jobs: list[Body] = []
    for result in results:
        if result.error is None:
            jobs.append({"id": result.job, "created": result.created})
        else:
            jobs.append({"error": result.error, "index": result.index})
    return {"jobs": jobs}


def parse_submitted(reply: Body, count: int) -> list[Submitted]:
    """The results of a submit_many reply for count specs; WireError if malformed."""
    jobs = reply.get("jobs")
    if not isinstance(jobs, list) or len(jobs) != count:
        raise WireError(f"submit_many reply: jobs must be a list of {count} results")
    return [_submitted(index, item) for index, item in enumerate(jobs)]


def _submitted(index: int, item: object) -> Submitted:
    what = f"submit_many reply, result {index}"
    if not isinstance(item, dict):
        raise WireError(f"{what}: must be an object")
    if "error" in item:
        if item.get("index") != index:
            raise WireError(f"{what}: index must be {index}, got {item.get('index')!r}")
        return Submitted(index, error=str(item["error"]))
    job_id, created = item.get("id"), item.get("created")
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise WireError(f"{what}: id must be a job id, got {job_id!r}")
    if not isinstance(created, bool):
        raise WireError(f"{what}: created must be true or false, got {created!r}")
    return Submitted(index, job_id, created)


# {np}.api.explain: answered by the leader alone (it has the view), not the queue group.

LEADER_VERBS = ("explain",)


def explanation(found: Explanation) -> Body:
    """The reply fields of an explain: the job's summary and each node's verdict."""
    return {
        "job": found.job,
        "state": found.state,
        "summary": found.summary,
        "nodes": [
            {"node": v.node, "cpus": v.cpus, "free": v.free, "reasons": list(v.reasons)}
            for v in found.nodes
        ],
    }


def parse_explanation(reply: Body) -> Explanation:
    """An explain reply; WireError if malformed."""
    job, state, summary = reply.get("job"), reply.get("state"), reply.get("summary")
    nodes = reply.get("nodes")
    if not all(isinstance(v, str) for v in (job, state, summary)) or not isinstance(nodes, list):
        raise WireError("explain reply: job, state, summary and nodes are needed")
    return Explanation(str(job), str(state), str(summary), tuple(map(_verdict, nodes)))


def _verdict(item: object) -> NodeVerdict:
    if not isinstance(item, dict):
        raise WireError("explain reply: each node verdict must be an object")
    name, cpus, free, reasons = (item.get(k) for k in ("node", "cpus", "free", "reasons"))
    numbers = all(isinstance(n, int | float) and not isinstance(n, bool) for n in (cpus, free))
    if not isinstance(name, str) or not numbers or not isinstance(reasons, list):
        raise WireError(f"explain reply: malformed node verdict {item!r:.200}")
    assert isinstance(cpus, int | float) and isinstance(free, int | float)
    return NodeVerdict(name, float(cpus), float(free), tuple(str(r) for r in reasons))
