"""The handover file: written whole or not at all, and anything unusable in it is removed."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from schedagent.daemon import handover
from schedagent.daemon.handover import HandedAttempt, Handover

HANDOVER = Handover(
    invocation_id="5f3d0c6b2a1e4e0e9c1b7a8d6e5f4a3b",
    lease_id=0x694D8F2A1B3C4D5E,
    ttl=10,
    refreshed_at=12345.678,
    attempts=(
        HandedAttempt("0123456789abcdef0123", 1, "schedjob-0123456789abcdef0123-1.service", 0, 0),
        HandedAttempt("fedcba98765432100123", 3, "schedjob-fedcba98765432100123-3.service", 42, 7),
    ),
)


def test_it_reads_back_what_was_written_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "handover.json"
    handover.write(path, HANDOVER)
    assert handover.read(path) == HANDOVER
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["handover.json"]  # no temp file left
    assert json.loads(path.read_bytes())["v"] == handover.VERSION


def test_a_write_replaces_the_old_one_whole(tmp_path: Path) -> None:
    path = tmp_path / "handover.json"
    handover.write(path, HANDOVER)
    empty = Handover("other", 7, 10, 1.0)
    handover.write(path, empty)
    assert handover.read(path) == empty and empty.attempts == ()
    assert len(list(tmp_path.iterdir())) == 1


def test_a_write_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        handover.write(tmp_path / "missing" / "handover.json", HANDOVER)
    blocked = tmp_path / "handover.json"
    blocked.mkdir()  # the rename fails: a directory is in the way
    with pytest.raises(OSError):
        handover.write(blocked, HANDOVER)
    assert [p.name for p in tmp_path.iterdir()] == ["handover.json"]


def test_none_there_is_none_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert handover.read(tmp_path / "handover.json") is None
    handover.remove(tmp_path / "handover.json")  # already gone: no error
    assert not caplog.records


def encoded(**changes: object) -> bytes:
    data = json.loads(handover._ENCODER.encode(HANDOVER))
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "truncated"),
        (handover._ENCODER.encode(HANDOVER)[:-9], "truncated"),  # a partial write
        (b"\x00\xff\xfe garbage", "malformed"),
        (b"[1, 2]", "Expected `object`"),
        (b"null", "Expected `object`"),
        (encoded(lease_id="abc"), "Expected `int`, got `str` - at `$.lease_id`"),
        (encoded(lease_id=0), "Expected `int` >= 1 - at `$.lease_id`"),
        (encoded(invocation_id=""), "at `$.invocation_id`"),
        (encoded(ttl=None), "at `$.ttl`"),
        (encoded(attempts=[{"job_id": "x"}]), "missing required field `attempt`"),
        (encoded(attempts=[["x", 1, "u", -1, 0]]), "Expected `object`, got `array`"),
        (encoded(new_field=1), "unknown field `new_field`"),
        (encoded(v=2), "version 2, this agent reads 1"),
        (encoded(v=2, new_field=1), "version 2, this agent reads 1"),
    ],
)
def test_an_unusable_one_is_said_and_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: bytes, problem: str
) -> None:
    path = tmp_path / "handover.json"
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING, "schedagent.daemon.handover"):
        assert handover.read(path) is None
    assert not path.exists()
    [record] = caplog.records
    assert str(path) in record.getMessage() and problem in record.getMessage()


def test_one_that_cannot_even_be_removed_is_still_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "handover.json"
    (path / "inside").mkdir(parents=True)  # not a file, and not an empty directory
    assert handover.read(path) is None
    [record] = caplog.records
    assert "cannot read it: Is a directory; cannot remove it" in record.getMessage()
