"""The output tail a record keeps: the end of the output, at most its bound in JSON bytes."""

from __future__ import annotations

import json
import os

import msgspec
import pytest

from schedagent.core import tail
from schedagent.core.model import Job, JobSpec, JobState
from schedagent.daemon.running import OutputTail

LIMIT = 4096


def kept(*chunks: bytes, limit: int = LIMIT) -> tail.Tail:
    output = OutputTail(limit)
    for chunk in chunks:
        output.add(chunk)
    return output.kept()


def json_size(kept: tail.Tail) -> int:
    """What the tail adds to a record's JSON, past an empty one."""
    job = Job("a" * 20, JobSpec(cmd="x"), JobState.SUCCEEDED, 1.0)
    empty = len(job.to_json())
    job.output_tail, job.output_tail_base64 = kept.text, kept.base64
    return len(job.to_json()) - empty


def record_of(kept: tail.Tail) -> dict[str, object]:
    return {"output_tail": kept.text, "output_tail_base64": kept.base64}


@pytest.mark.parametrize(
    "output",
    [
        os.urandom(3 * LIMIT),
        b"\0" * LIMIT,  # UTF-8, but each byte is 6 in JSON
        b"\x1b[1m" * 2000,  # terminal escapes
        '"quoted" \\ é'.encode() * 600,
        b"plain text\n" * 1000,
    ],
    ids=["random", "nul", "escapes", "quotes-and-accents", "text"],
)
def test_the_tail_of_any_output_takes_at_most_its_bound_and_is_the_end_of_it(
    output: bytes,
) -> None:
    # Before: bytes decoded with replacement characters, then escaped: up to 6 bytes
    # of JSON each (24 KB for 4 KiB of NUL), and random bytes could not be read back.
    chunks = [output[i : i + 1000] for i in range(0, len(output), 1000)]
    result = kept(*chunks)
    assert json_size(result) <= LIMIT + len(',"output_tail_base64":""')
    data = tail.output_bytes(record_of(result))
    assert output.endswith(data) and len(data) >= LIMIT // 6


def test_text_cut_inside_a_character_stays_text() -> None:
    # 4096 bytes of 3-byte characters: the window starts inside one.
    text = "€" * 2000
    result = kept(text.encode())
    assert result.base64 is None
    assert result.text == "€" * (LIMIT // 3)  # the partial character dropped, no U+FFFD


def test_binary_output_is_base64_of_its_last_bytes() -> None:
    output = bytes(range(256)) * 32  # not UTF-8
    result = kept(output)
    assert result.text == "" and result.base64 is not None
    assert tail.output_bytes(record_of(result)) == output[-(LIMIT // 4 * 3) :]
    assert not tail.is_text(record_of(result))


def test_no_tail_kept_with_a_bound_of_zero() -> None:
    assert tail.output_bytes(record_of(kept(b"x" * 10, limit=0))) == b""
    assert tail.output_bytes(record_of(kept(os.urandom(10), limit=0))) == b""


def test_a_record_of_an_older_version_still_reads() -> None:
    # Its binary output was text with replacement characters; it has no base64 field.
    old = json.loads(msgspec.json.encode({"output_tail": "ok \ufffd\n"}))
    assert tail.is_text(old) and tail.output_bytes(old) == "ok \ufffd\n".encode()
    assert tail.output_bytes({"output_tail_base64": "!!"}) == b""  # garbled: nothing
