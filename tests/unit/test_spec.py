"""Validation of submitted job specs: every bad field gets a clear message."""

from __future__ import annotations

import pytest

from schedagent.core.model import new_job_id
from schedagent.core.spec import parse_spec
from schedagent.errors import SpecError


def test_defaults() -> None:
    spec = parse_spec({"cmd": "echo hi"})
    assert spec.cpus == 1.0 and spec.retries == 0 and spec.timeout is None and spec.env == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("echo", "must be a JSON object"),
        ({}, "cmd must be a non-empty string"),
        ({"cmd": "  "}, "cmd must be a non-empty string"),
        ({"cmd": "x", "cpus": 0}, "cpus must be a number > 0"),
        ({"cmd": "x", "cpus": "2"}, "cpus must be a number > 0"),
        ({"cmd": "x", "timeout": -1}, "timeout must be a number > 0"),
        ({"cmd": "x", "retries": 1.5}, "retries must be an integer"),
        ({"cmd": "x", "retries": True}, "retries must be an integer"),
        ({"cmd": "x", "env": {"1A": "v"}}, "not a valid variable name"),
        ({"cmd": "x", "env": {"A": 1}}, "must map a string to a string"),
        ({"cmd": "x", "cwd": "rel/dir"}, "cwd must be an absolute path"),
        ({"cmd": "x", "labels": []}, "labels must be an object"),
        ({"cmd": "x", "colour": "red"}, "unknown spec field(s): colour"),
        ({"cmd": "x\0y"}, "no NUL byte"),
        # What the OS would refuse only when the job starts is refused at the door.
        ({"cmd": "echo \ud800"}, "cmd must be valid Unicode text"),
        ({"cmd": "x", "env": {"A": "\udc80"}}, "env A must be valid Unicode text"),
        ({"cmd": "x", "cwd": "/tmp/\ud800"}, "cwd must be valid Unicode text"),
        ({"cmd": "x", "cwd": "/tmp/\0"}, "cwd must be an absolute path"),
        ({"cmd": "x", "extra": {}}, "unknown spec field(s): extra"),
        ({"cmd": "x", "after": "0" * 20}, "after must be a list of job ids"),
        ({"cmd": "x", "after": ["nope"]}, "after: 'nope' is not a job id"),
        ({"cmd": "x", "after": ["A" * 20]}, "is not a job id (20 lower-case hex digits)"),
        ({"cmd": "x", "after": [1]}, "after: 1 is not a job id"),
        ({"cmd": "x", "after": ["0" * 20, "0" * 20]}, "after names a job more than once"),
        ({"cmd": "x", "memory": "64M"}, "memory must be a number, got '64M'"),
        ({"cmd": "x", "memory": 1000}, "memory must be from 1M to 1P"),
        ({"cmd": "x", "memory": 1.5e9}, "memory must be a size"),
        ({"cmd": "x", "tasks": 0}, "tasks must be an integer from 1"),
        ({"cmd": "x", "tasks": True}, "tasks must be an integer from 1"),
        ({"cmd": "x", "after": [f"{n:020x}" for n in range(65)]}, "names 65 jobs; at most 64"),
    ],
)
def test_bad_specs(raw: object, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(raw)


def test_limits_are_kept_and_left_out_of_the_record_when_unset() -> None:
    spec = parse_spec({"cmd": "x", "memory": 64 << 20, "tasks": 10})
    assert (spec.memory, spec.tasks) == (64 << 20, 10)
    assert spec.to_dict()["memory"] == 64 << 20
    assert "memory" not in parse_spec({"cmd": "x"}).to_dict()


def test_cmd_size_limit() -> None:
    with pytest.raises(SpecError, match="at most 10 bytes"):
        parse_spec({"cmd": "x" * 11}, max_cmd_bytes=10)


def test_job_ids_sort_by_time() -> None:
    assert new_job_id(1000.0) < new_job_id(1000.002) < new_job_id(2000.0)
    assert len(new_job_id()) == 20
