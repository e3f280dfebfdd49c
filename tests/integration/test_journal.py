"""journald's native protocol: the encoding, log records' fields, and a real agent's job story."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiclient import ApiClient
from schedagent.config import parse_config
from schedagent.dev.cluster import AgentProcess
from schedagent.dev.procs import EtcdServer, NatsServer
from schedagent.errors import ConfigError
from schedagent.host import journal
from sdsockets import DatagramListener, parse_journal

Journal = DatagramListener[dict[str, bytes]]


@pytest.fixture
def journal_socket() -> Iterator[Journal]:
    # A short directory: sun_path holds 108 bytes, pytest's tmp_path can be longer.
    where = tempfile.mkdtemp(prefix="sa-journal-")
    listener = DatagramListener(f"{where}/socket", parse_journal)
    yield listener
    listener.close()
    shutil.rmtree(where, ignore_errors=True)


def test_encode_uses_the_binary_form_for_multi_line_values() -> None:
    data = journal.encode({"MESSAGE": "two\nlines", "PRIORITY": 6, "RAW": b"x=y"})
    assert data == b"MESSAGE\n\x09\x00\x00\x00\x00\x00\x00\x00two\nlines\nPRIORITY=6\nRAW=x=y\n"
    assert parse_journal(data) == {"MESSAGE": b"two\nlines", "PRIORITY": b"6", "RAW": b"x=y"}


def test_records_carry_job_fields_code_location_and_tracebacks(journal_socket: Journal) -> None:
    logger = logging.getLogger("schedagent.test")
    handler = journal.JournalHandler(
        journal.Journal(journal_socket.address), "n1", fallback=logging.NullHandler()
    )
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.error("job %s failed", "j1", exc_info=True, extra={"job_id": "j1", "attempt": 2})
    finally:
        logger.removeHandler(handler)
    got = journal_socket.wait_for(lambda f: f.get("JOB_ID") == b"j1", 5, "the record").body
    assert got["MESSAGE"].startswith(b"job j1 failed\nTraceback")
    assert b"ValueError: boom" in got["MESSAGE"]
    assert got["PRIORITY"] == b"3" and got["ATTEMPT"] == b"2" and got["NODE"] == b"n1"
    assert got["SYSLOG_IDENTIFIER"] == b"schedagent"
    assert got["CODE_FILE"] == __file__.encode()
    assert got["CODE_FUNC"] == b"test_records_carry_job_fields_code_location_and_tracebacks"
    source = Path(__file__).read_text().splitlines()
    assert "logger.error(" in source[int(got["CODE_LINE"]) - 1]


def test_journal_away_falls_back_to_the_plain_handler(tmp_path: Path) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = journal.JournalHandler(journal.Journal(str(tmp_path / "none")), "n1", Keep())
    handler.handle(logging.makeLogRecord({"msg": "hello", "levelno": logging.INFO}))
    assert [r.getMessage() for r in seen] == ["hello"]


def test_job_output_is_cut_into_lines(journal_socket: Journal) -> None:
    out = journal.JobOutput(journal.Journal(journal_socket.address), "j2", 1, "n1")
    out.feed("stdout", b"one\ntw")
    out.feed("stderr", b"oops\n")
    out.feed("stdout", b"o\nthree")
    out.close()
    journal_socket.wait_for(lambda f: f.get("MESSAGE") == b"three", 5, "the last line")
    lines = [(m.body["JOB_STREAM"], m.body["MESSAGE"]) for m in journal_socket.messages()]
    assert lines == [
        (b"stdout", b"one"),
        (b"stderr", b"oops"),
        (b"stdout", b"two"),
        (b"stdout", b"three"),
    ]
    first = journal_socket.messages()[0].body
    assert first["SYSLOG_IDENTIFIER"] == b"schedagent-job" and first["JOB_ID"] == b"j2"
    journal.JobOutput(None, "j3", 1, "n1").feed("stdout", b"dropped\n")  # disabled: a no-op


def test_auto_target_trusts_journal_stream_only_for_the_real_fd(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as f:
        st = os.fstat(f.fileno())
        stream = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal.wanted("auto", stream, f.fileno())
        assert not journal.wanted("auto", {"JOURNAL_STREAM": "1:2"}, f.fileno())
        assert not journal.wanted("auto", {}, f.fileno())
        assert not journal.wanted("stderr", stream, f.fileno())
    assert journal.wanted("journal", {})


@pytest.mark.parametrize(
    ("raw", "key"),
    [({"log_target": "syslog"}, "log_target"), ({"output": {"journal": "yes"}}, "output.journal")],
)
def test_bad_journal_settings_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.key == key


async def test_a_jobs_whole_story_is_in_the_journal_by_job_id(
    tmp_path: Path, etcd_server: EtcdServer, nats_server: NatsServer, journal_socket: Journal
) -> None:
    agent = AgentProcess(
        "node1",
        tmp_path / "node1",
        etcd_endpoint=etcd_server.url,
        nats_url=nats_server.url,
        overrides={"log_target": "journal"},
        env={journal.SOCKET_ENV: journal_socket.address},
    )
    with agent:
        journal_socket.wait_for(lambda f: b"ready" in f.get("MESSAGE", b""), 30, "agent ready")
        async with ApiClient(nats_server.url) as api:
            # Two lines of shell: the "started" record's MESSAGE is multi-line.
            job_id = await api.submit("echo one; echo two >&2\nexit 3")
            job = await api.wait_for(job_id)
        assert job["state"] == "FAILED" and job["exit_code"] == 3
        story = _story(journal_socket, job_id)
    ours = [f for f in story if f["SYSLOG_IDENTIFIER"] == b"schedagent"]
    messages = [f["MESSAGE"] for f in ours]
    assert any(b"submitted" in m for m in messages)
    started = next(f for f in ours if b"started" in f["MESSAGE"])
    assert started["MESSAGE"].endswith(b"echo one; echo two >&2\nexit 3")
    assert started["ATTEMPT"] == b"1" and started["NODE"] == b"node1"
    assert started["CODE_FILE"].endswith(b"worker.py") and started["CODE_LINE"].isdigit()
    ended = next(f for f in ours if b"ended" in f["MESSAGE"])
    assert ended["EXIT_CODE"] == b"3" and ended["PRIORITY"] == b"6"
    output = [(f["JOB_STREAM"], f["MESSAGE"]) for f in story if f not in ours]
    assert sorted(output) == [(b"stderr", b"two"), (b"stdout", b"one")]
    assert all(f["SYSLOG_IDENTIFIER"] == b"schedagent-job" for f in story if f not in ours)
    assert b"submitted" not in agent.log_path.read_bytes()  # not on stderr as well


def _story(listener: Journal, job_id: str) -> list[dict[str, bytes]]:
    ended = listener.wait_for(
        lambda f: f.get("JOB_ID") == job_id.encode() and b"ended" in f.get("MESSAGE", b""),
        15,
        "the job's end in the journal",
    )
    return [
        m.body
        for m in listener.messages()
        if m.body.get("JOB_ID") == job_id.encode() and m.at <= ended.at
    ]
