"""`schedctl submit --file` lines: each checked as the agent checks a spec, signed, and
cut into requests; a bad line is an error for that line only."""

from __future__ import annotations

import json

import pytest

from schedagent.core import wire
from schedagent.core.signing import Signature, SignatureRejected, SigningKey, verify
from schedagent.ctl.batch import Line, batches, line_spec, read_lines
from schedagent.errors import SpecError


def test_a_line_becomes_a_full_spec_with_a_fresh_key() -> None:
    spec = line_spec('{"cmd": "make", "cpus": 2, "labels": {"zone": "a"}, "timeout": 5}')
    assert spec["cmd"] == "make" and spec["cpus"] == 2.0 and spec["timeout"] == 5.0
    assert spec["labels"] == {"zone": "a"} and spec["retries"] == 0
    assert isinstance(spec["idempotency_key"], str) and "signature" not in spec
    assert line_spec('{"cmd": "x"}')["idempotency_key"] != spec["idempotency_key"]
    assert line_spec('{"cmd": "x", "idempotency_key": "nightly"}')["idempotency_key"] == "nightly"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"cmd": "x"', "not valid JSON"),
        ('["cmd"]', "must be a JSON object"),
        ('{"cmd": "x", "signature": {}}', "unknown field.*signature"),
        ('{"cmd": "x", "priority": 1}', "unknown field.*priority"),
        ('{"cmd": ""}', "cmd"),
        ('{"cmd": "x", "cpus": 0}', "cpus"),
        ('{"cmd": "x", "env": {"A B": "1"}}', "env"),
        ('{"cmd": "x", "after": ["nope"]}', "after: 'nope' is not a job id"),
    ],
)
def test_a_bad_line_says_why(text: str, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        line_spec(text)


def test_a_lines_parents_are_kept_and_signed_and_absent_when_none() -> None:
    key = SigningKey.generate()
    parent = "0" * 19 + "a"
    (with_parent, without) = read_lines(
        [json.dumps({"cmd": "a", "after": [parent]}), '{"cmd": "b"}'], key
    )
    assert with_parent.spec is not None and without.spec is not None
    assert with_parent.spec["after"] == [parent]
    assert "after" not in without.spec  # an agent older than the field refuses it
    signature = Signature.from_dict(with_parent.spec["signature"])
    assert verify(with_parent.spec, signature, {key.key_id: key.public}, max_age=60)
    with pytest.raises(SignatureRejected):
        verify({**with_parent.spec, "after": []}, signature, {key.key_id: key.public}, 60)


def test_lines_are_numbered_from_one_blank_ones_skipped_and_signed() -> None:
    key = SigningKey.generate()
    lines = read_lines(['{"cmd": "a"}\n', "\n", "oops\n", '{"cmd": "b"}\n'], key)
    assert [(line.number, line.error is None) for line in lines] == [
        (1, True),
        (3, False),
        (4, True),
    ]
    spec = lines[0].spec
    assert spec is not None
    signature = Signature.from_dict(spec["signature"])
    assert verify(spec, signature, {key.key_id: key.public}, max_age=60) == key.key_id


def test_batches_keep_the_order_and_both_limits() -> None:
    lines = [Line(n, spec={"cmd": "x" * 90}) for n in range(1, 26)]
    lines.insert(3, Line(99, error="bad"))
    cut = list(batches(lines, count=10, size=5000))
    assert [[line.number for line in batch] for batch in cut] == [
        list(range(1, 11)),
        list(range(11, 21)),
        list(range(21, 26)),
    ]
    by_size = list(batches(lines, count=100, size=450))
    assert all(sum(len(json.dumps(line.spec)) for line in b) <= 450 for b in by_size)
    assert [line.number for b in by_size for line in b] == list(range(1, 26))


def test_the_default_batch_is_the_agents_limit() -> None:
    lines = [Line(n, spec={"cmd": "true"}) for n in range(2500)]
    assert [len(b) for b in batches(lines)] == [wire.MAX_SUBMIT_BATCH] * 2 + [500]
