"""The handover file: what an agent stopping for a restart leaves its successor (issue 19)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated

import msgspec

from schedagent import paths

log = logging.getLogger(__name__)

DEFAULT_PATH = Path(paths.HANDOVER)
VERSION = 1

Positive = Annotated[int, msgspec.Meta(gt=0)]
Offset = Annotated[int, msgspec.Meta(ge=0)]


class HandedAttempt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A running attempt left to the next agent: its unit and how much of its output
    files is already published."""

    job_id: str
    attempt: Positive
    unit: str
    stdout_offset: Offset
    stderr_offset: Offset


class Handover(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Written by an agent stopping for a restart, read by the next one at its start.

    Unknown fields are refused, not skipped: an agent that cannot read all of a
    handover (a downgrade) must not adopt jobs on half of it; it stops them instead.
    """

    # $INVOCATION_ID of the writer: its ExecStopPost= keeps the jobs only if it is its own.
    invocation_id: Annotated[str, msgspec.Meta(min_length=1)]
    lease_id: Positive
    ttl: Positive
    # When the last good lease refresh was sent, on session.fence_clock
    # (CLOCK_BOOTTIME): one kernel clock for every process of a boot, so the next
    # agent's clock continues it, where a monotonic value of Python's own would not and
    # time.time() may be stepped (NTP, an operator) between the two. The file lives on
    # tmpfs: a value from another boot is never read.
    refreshed_at: float
    attempts: tuple[HandedAttempt, ...] = ()
    v: int = VERSION


class _Versioned(msgspec.Struct):
    """Any version's handover, as far as its version: read before the rest."""

    v: int = VERSION


_ENCODER = msgspec.json.Encoder()
_VERSION_DECODER = msgspec.json.Decoder(_Versioned)
_DECODER = msgspec.json.Decoder(Handover)


def write(path: Path, handover: Handover) -> None:
    """Replace the file at once (a reader sees the old one or the new one whole, even
    across a crash), readable by its owner only. OSError if it cannot be written."""
    data = _ENCODER.encode(handover)
    # mkstemp makes it 0600, whatever the umask; in the same directory, so that the
    # rename is one on the same filesystem.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _sync_dir(path.parent)


def read(path: Path) -> Handover | None:
    """The handover at `path`, or None: none there, or one that cannot be used, which
    is said and removed (never an exception: without a handover jobs are stopped)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _unusable(path, f"cannot read it: {exc.strerror or exc}")
        return None
    try:
        version = _VERSION_DECODER.decode(raw).v
        if version != VERSION:
            _unusable(path, f"version {version}, this agent reads {VERSION}")
            return None
        return _DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        _unusable(path, str(exc))
        return None


def remove(path: Path) -> None:
    """No handover any more; one already gone is no error."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _unusable(path: Path, problem: str) -> None:
    try:
        remove(path)
    except OSError as exc:
        log.warning(
            "handover %s not used: %s; cannot remove it: %s", path, problem, exc.strerror or exc
        )
        return
    log.warning("handover %s not used: %s; removed", path, problem)


def _sync_dir(directory: Path) -> None:
    # The rename is durable only once the directory is: moot on tmpfs, not elsewhere.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
