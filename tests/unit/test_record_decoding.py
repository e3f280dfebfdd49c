"""Job and node records from etcd: anything else is a ValueError, newer fields are kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schedagent.core.model import Attempt, Job, JobSpec, JobState, NodeRecord


def record() -> dict[str, Any]:
    job = Job(
        id="a" * 20,
        spec=JobSpec(cmd="true"),
        state=JobState.PENDING,
        submitted_at=1.0,
        attempts=[Attempt(n=1, node="n1", assigned_at=1.0)],
    )
    return job.to_dict()


@pytest.mark.parametrize(
    "raw",
    [b"null", b"[]", b"5", b'"x"', b"\xff\xfe\xfa", b"{", b"{}", b'{"id": 5}'],
    ids=["null", "list", "number", "string", "not-utf8", "cut", "empty", "partial"],
)
def test_anything_but_a_job_record_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Job.from_json(raw)
    with pytest.raises(ValueError):
        NodeRecord.from_json(raw)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("attempt",), "2"),
        (("attempt",), True),
        (("state",), "LATER"),
        (("cancel_requested",), 1),
        (("not_before",), float("nan")),
        (("spec",), "true"),
        (("spec", "env"), {"A": 1}),
        (("spec", "cpus"), None),
        (("spec", "signature"), "sig"),
        (("spec", "after"), "a" * 20),
        (("spec", "after"), ["not a job id"]),
        (("spec", "after"), [5]),
        (("attempts",), {"n": 1}),
        (("attempts", 0), 5),
        (("attempts", 0, "n"), 1.5),
    ],
)
def test_a_field_of_the_wrong_type_is_a_value_error(
    path: tuple[object, ...], value: object
) -> None:
    data = record()
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ValueError):
        Job.from_json(json.dumps(data).encode())


def test_fields_of_a_newer_version_are_kept_on_rewrite() -> None:
    data = record()
    data["priority"] = 3
    data["spec"]["deadline"] = {"at": 5}
    data["attempts"][0]["zone"] = "b"
    data["extra"] = "a field named extra is just another field"
    job = Job.from_json(json.dumps(data).encode())
    assert job.extra == {"priority": 3, "extra": "a field named extra is just another field"}
    assert job.spec.extra == {"deadline": {"at": 5}}
    assert job.attempts[0].extra == {"zone": "b"}
    again = json.loads(job.clone().to_json())
    assert again["priority"] == 3 and again["extra"] == data["extra"]
    assert again["spec"]["deadline"] == {"at": 5} and again["attempts"][0]["zone"] == "b"
    assert Job.from_json(job.to_json()) == job


def test_a_known_field_wins_over_an_unknown_one_of_the_same_name() -> None:
    job = Job.from_json(json.dumps(record()).encode())
    assert "v" not in job.extra and job.to_dict()["v"] == 1


def test_a_jobs_parents_round_trip_and_an_older_record_has_none() -> None:
    data = record()
    data["spec"]["after"] = ["b" * 20, "c" * 20]
    job = Job.from_json(json.dumps(data).encode())
    assert job.spec.after == ("b" * 20, "c" * 20)
    assert Job.from_json(job.to_json()) == job
    del data["spec"]["after"]  # written before the field existed
    assert Job.from_json(json.dumps(data).encode()).spec.after == ()


# A finished record exactly as the version before msgspec records (dataclasses and the
# stdlib json) wrote it: a handed-back attempt, a signed spec, every field.
PREVIOUS_VERSION = (
    b'{"attempt":2,"cancel_requested":false,"exit_code":0,"id":"018f0000000000000001","nod'
    b'e":"node2","not_before":0.0,"output_tail":"hi\\n","pid":null,"reason":"exit code 0","'
    b'submitted_at":1790000000.1,"updated_at":1790000000.4,"spec":{"user":"nobody","signat'
    b'ure":{"key_id":"abc","nonce":"n1","signed_at":1790000000.0,"value":"c2ln"},"cmd":"ec'
    b'ho hi","cpus":2.0,"timeout":30.0,"retries":0,"env":{"A":"b"},"cwd":null,"node":null,'
    b'"labels":{"zone":"a"},"idempotency_key":"k1"},"state":"SUCCEEDED","attempts":[{"n":1'
    b',"node":"node1","assigned_at":1790000000.2,"started_at":null,"ended_at":1790000000.2'
    b'1,"state":"handed back","exit_code":null,"signal":null,"reason":"agent stopped","lea'
    b'se":null},{"n":2,"node":"node2","assigned_at":1790000000.22,"started_at":1790000000.'
    b'25,"ended_at":1790000000.3,"state":"SUCCEEDED","exit_code":0,"signal":null,"reason":'
    b'"exit code 0","lease":7587869786977788}],"v":1}'
)


def test_a_record_of_the_previous_version_decodes_and_is_written_back_whole() -> None:
    job = Job.from_json(PREVIOUS_VERSION)
    assert (job.state, job.spec.cpus, job.spec.env, job.attempts[1].lease) == (
        JobState.SUCCEEDED,
        2.0,
        {"A": "b"},
        7587869786977788,
    )
    assert not job.extra and not job.spec.extra and not job.attempts[0].extra
    # Written back with every field it had, and the fields added since at their defaults.
    written = {**json.loads(PREVIOUS_VERSION), "output_tail_base64": None}
    written["spec"] = {**written["spec"], "after": [], "schedule": None, "memory": None}
    written["spec"]["fleet"] = None
    written["spec"]["tasks"] = None
    written["attempts"] = [{**a, "usage": None} for a in written["attempts"]]
    assert json.loads(job.to_json()) == written
    assert json.loads(job.clone().to_json()) == written
