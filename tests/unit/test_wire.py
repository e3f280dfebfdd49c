"""Every NATS message body round-trips through core/wire.py, and a malformed one is refused."""

from __future__ import annotations

import json

import pytest

from schedagent.core import wire
from schedagent.core.model import Job, JobSpec, JobState
from schedagent.errors import SpecError, WireError

JOB = "018f0000000000000001"


def test_dispatch_round_trips() -> None:
    assert wire.parse_dispatch(wire.dispatch(JOB, 3)) == wire.Dispatch(JOB, 3)


def test_a_dispatch_carries_the_record_as_stored_and_its_revision() -> None:
    job = Job(JOB, JobSpec(cmd='echo "é"'), JobState.ASSIGNED, 1.0, node="n1")
    record = job.to_json()
    assert wire.parse_dispatch(wire.dispatch(JOB, 1, record, 42)) == wire.Dispatch(
        JOB, 1, record, 42
    )


def test_a_record_too_large_for_a_dispatch_is_left_out() -> None:
    record = b'{"x":"' + b"y" * wire.MAX_DISPATCH_RECORD + b'"}'
    assert wire.parse_dispatch(wire.dispatch(JOB, 1, record, 42)) == wire.Dispatch(JOB, 1)


@pytest.mark.parametrize(
    "extra",
    [
        {"record": {"id": JOB}, "revision": 4},
        {"record": "{}", "revision": "4"},
        {"record": "{}", "revision": True},
        {"record": "{}", "revision": 0},
        {"record": "{}"},
    ],
)
def test_a_malformed_record_in_a_dispatch_is_left_out(extra: dict[str, object]) -> None:
    # The job and attempt alone are a dispatch: the worker reads the record then.
    body = json.dumps({"v": 1, "job": JOB, "attempt": 2, **extra}).encode()
    assert wire.parse_dispatch(body) == wire.Dispatch(JOB, 2)


def test_control_round_trips() -> None:
    assert wire.parse_control(wire.cancel(JOB, 2)) == wire.Control("cancel", JOB, 2)


def test_event_carries_the_records_state() -> None:
    job = Job(JOB, JobSpec(cmd="true"), JobState.FAILED, 1.0, attempt=2, node="n1")
    job.exit_code, job.reason = 3, "exit status 3"
    event = wire.parse_event(wire.event(job, 5.0))
    assert event == wire.Event(JOB, "FAILED", 2, "n1", 3, "exit status 3", 5.0)


def test_output_chunks_and_end() -> None:
    chunk = wire.parse_output(wire.output_chunk(JOB, 1, "stderr", "é\n"))
    assert chunk == wire.OutputChunk(JOB, 1, "stderr", "é\n")
    assert wire.parse_output(wire.output_end(JOB, 1)) == wire.OutputEnd(JOB, 1)


def test_beat_round_trips() -> None:
    assert wire.parse_beat(wire.beat("n2", 41)) == wire.Beat("n2", 41)


def test_reach_round_trips() -> None:
    assert wire.parse_reach(wire.reach("n3", False, 4.25)) == wire.Reach("n3", False, 4.25)
    assert wire.parse_reach(wire.reach("n3", True, None)) == wire.Reach("n3", True, None)


@pytest.mark.parametrize(
    "data",
    [
        b'{"node": "", "reaching": true}',
        b'{"node": 3, "reaching": true}',
        b'{"node": "n1", "reaching": 1}',
        b'{"node": "n1"}',
        b'{"node": "n1", "reaching": false, "age": "3"}',
        b'{"node": "n1", "reaching": false, "age": true}',
    ],
)
def test_malformed_reach_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        wire.parse_reach(data)


def test_every_body_carries_the_version() -> None:
    bodies = [wire.dispatch(JOB, 1), wire.cancel(JOB, 1), wire.beat("n", 1), wire.request()]
    assert all(json.loads(b)["v"] == wire.VERSION for b in bodies)


def test_unknown_fields_are_ignored() -> None:
    # A newer sender may add fields; an older reader must still understand the rest.
    body = json.dumps({"v": 2, "job": JOB, "attempt": 1, "batch": [1, 2]}).encode()
    assert wire.parse_dispatch(body) == wire.Dispatch(JOB, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"null",
        b"[]",
        b'"x"',
        b'{"job": "nope", "attempt": 1}',
        b'{"job": "018f0000000000000001", "attempt": 0}',
        b'{"job": "018f0000000000000001", "attempt": true}',
        b'{"job": "018f0000000000000001", "attempt": "1"}',
        b"\xff\xfe",
    ],
)
def test_malformed_dispatch_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        wire.parse_dispatch(data)


@pytest.mark.parametrize(
    ("parse", "data"),
    [
        (wire.parse_control, b'{"job": "018f0000000000000001"}'),
        (wire.parse_event, b'{"job": "018f0000000000000001", "attempt": 1}'),
        (wire.parse_output, b'{"job": "018f0000000000000001", "attempt": 1, "data": 7}'),
        (wire.parse_beat, b'{"node": "n1", "token": "7"}'),
        (wire.parse_reply, b"[1]"),
    ],
)
def test_malformed_bodies_are_wire_errors(parse: object, data: bytes) -> None:
    with pytest.raises(WireError):
        parse(data)  # type: ignore[operator]


def test_a_bad_request_is_a_spec_error_with_the_reason() -> None:
    assert wire.parse_request(b"  ") == {}
    with pytest.raises(SpecError, match="must be a JSON object"):
        wire.parse_request(b"[]")
    with pytest.raises(SpecError, match="larger than"):
        wire.parse_request(b" " * (wire.MAX_REQUEST_BYTES + 1))


def test_replies() -> None:
    assert wire.parse_reply(wire.reply(wire.ok({"x": 1}))) == {"v": 1, "ok": True, "x": 1}
    error = wire.parse_reply(wire.reply(wire.error("not_found", "no job")))
    assert (error["ok"], error["code"], error["error"]) == (False, "not_found", "no job")


def test_submit_many_request_round_trips() -> None:
    specs = [{"cmd": "true"}, {"cmd": "echo 2", "cpus": 2}]
    body = wire.parse_request(wire.submit_many(specs))
    assert body["v"] == wire.VERSION
    assert wire.parse_submit_many(body) == specs


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "non-empty list"),
        ({"specs": []}, "non-empty list"),
        ({"specs": {"cmd": "true"}}, "non-empty list"),
        ({"specs": [{}] * (wire.MAX_SUBMIT_BATCH + 1)}, "at most 1000"),
    ],
)
def test_a_malformed_submit_many_request_is_refused_whole(body: wire.Body, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        wire.parse_submit_many(body)


def test_submit_many_reply_round_trips_in_order() -> None:
    results = [
        wire.Submitted(0, JOB, True),
        wire.Submitted(1, error="cpus must be a number > 0"),
        wire.Submitted(2, "018f0000000000000002", False),
    ]
    reply = wire.parse_reply(wire.reply(wire.ok(wire.submitted(results))))
    assert reply["jobs"][1] == {"error": "cpus must be a number > 0", "index": 1}
    assert wire.parse_submitted(reply, 3) == results


@pytest.mark.parametrize(
    "jobs",
    [
        None,
        [{"id": JOB, "created": True}],  # one result for two specs
        [{"id": JOB, "created": True}, {"id": "nope", "created": True}],
        [{"id": JOB, "created": True}, {"id": JOB, "created": "yes"}],
        [{"id": JOB, "created": True}, {"error": "bad", "index": 0}],
        [{"id": JOB, "created": True}, "x"],
    ],
)
def test_a_malformed_submit_many_reply_is_a_wire_error(jobs: object) -> None:
    with pytest.raises(WireError):
        wire.parse_submitted({"ok": True, "jobs": jobs}, 2)
