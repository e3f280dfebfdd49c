"""journald's native protocol: log records and job output lines as structured entries."""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Tests (and containers with the socket elsewhere) point the agent at another path.
SOCKET_ENV = "SCHEDAGENT_JOURNAL_SOCKET"
IDENTIFIER = "schedagent"
JOB_IDENTIFIER = "schedagent-job"
MAX_VALUE = 64 * 1024
MAX_LINE = 16 * 1024
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
# `extra={...}` keys of our log calls, and the journal fields they become.
EXTRA_FIELDS = {
    "job_id": "JOB_ID",
    "attempt": "ATTEMPT",
    "exit_code": "EXIT_CODE",
    "key_id": "KEY_ID",
    "audit_event": "AUDIT_EVENT",
    "schedule": "SCHEDULE",
    "node": "NODE",
}


def encode(fields: Mapping[str, object]) -> bytes:
    """One entry: KEY=value lines; a value with a newline in the length-prefixed form."""
    out = bytearray()
    for key, value in fields.items():
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def wanted(target: str, environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """log_target 'journal', or 'auto' with stderr being the stream JOURNAL_STREAM names."""
    if target != "auto":
        return target == "journal"
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    # systemd.exec(5): only trust it if fd 2 is still that stream (not redirected since).
    return stream == f"{st.st_dev}:{st.st_ino}"


class Journal:
    """A datagram socket to journald; send() is False when journald cannot be reached."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.environ.get(SOCKET_ENV) or JOURNAL_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, fields: Mapping[str, object]) -> bool:
        # Blocking, as sd_journal_send is: a stalled journald stalls the loop, which the
        # watchdog then reports, rather than records being dropped without a trace.
        try:
            self.sock.sendto(encode(fields), self.path)
        except OSError:
            return False
        return True


class JournalHandler(logging.Handler):
    """Log records as journal entries with JOB_ID, ATTEMPT, NODE, CODE_* fields."""

    def __init__(self, journal: Journal, node: str, fallback: logging.Handler) -> None:
        super().__init__()
        self.journal = journal
        self.node = node
        self.fallback = fallback  # stderr, for when journald is away (restarting, say)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sent = self.journal.send(self.fields(record))
        except Exception:
            self.handleError(record)
            return
        if not sent:
            self.fallback.handle(record)

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        fields: dict[str, object] = {
            "MESSAGE": message[:MAX_VALUE],
            "PRIORITY": priority(record.levelno),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "NODE": self.node,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
        }
        for attr, key in EXTRA_FIELDS.items():
            value = getattr(record, attr, None)
            if value is not None:
                fields[key] = value
        return fields


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (debug is 7)."""
    return next((prio for level, prio in PRIORITIES if levelno >= level), 7)


class JobOutput:
    """One attempt's output as journal lines under schedagent-job (a no-op without one)."""

    def __init__(self, journal: Journal | None, job_id: str, attempt: int, node: str) -> None:
        self.journal = journal
        self.base = {
            "SYSLOG_IDENTIFIER": JOB_IDENTIFIER,
            "JOB_ID": job_id,
            "ATTEMPT": attempt,
            "NODE": node,
        }
        self.partial = {"stdout": b"", "stderr": b""}

    def feed(self, stream: str, data: bytes) -> None:
        if self.journal is None:
            return
        lines = (self.partial[stream] + data).split(b"\n")
        self.partial[stream] = lines.pop()
        while len(self.partial[stream]) > MAX_LINE:  # an endless line still gets logged
            lines.append(self.partial[stream][:MAX_LINE])
            self.partial[stream] = self.partial[stream][MAX_LINE:]
        for line in lines:
            self._send(stream, line)

    def close(self) -> None:
        for stream, rest in self.partial.items():
            if rest and self.journal is not None:
                self._send(stream, rest)
            self.partial[stream] = b""

    def _send(self, stream: str, line: bytes) -> None:
        assert self.journal is not None
        # stderr at notice, so `journalctl -p notice` shows what jobs complained about.
        prio = 5 if stream == "stderr" else 6
        fields = {**self.base, "MESSAGE": line, "PRIORITY": prio, "JOB_STREAM": stream}
        self.journal.send(fields)


_active: Journal | None = None


def activate(journal: Journal | None) -> None:
    """Set the journal that job output goes to (logs.setup_logging calls this)."""
    global _active
    _active = journal


def job_output(job_id: str, attempt: int, node: str, enabled: bool = True) -> JobOutput:
    return JobOutput(_active if enabled else None, job_id, attempt, node)
