"""A job's output file, followed from an offset while something else appends to it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# How often a file that has nothing new is looked at again: soon after output (more
# is likely to follow), then less and less often while the job is quiet.
POLL_MIN = 0.02
POLL_MAX = 0.25
# What was handed on is given back to the filesystem in steps of at least this much,
# so a job that writes without end does not fill the state directory.
RELEASE_STEP = 1 << 20
BLOCK = 4096  # holes are punched in whole blocks of this size
FALLOC_FL_KEEP_SIZE = 0x01  # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02
# os has no punch-hole call, and no maintained library wraps fallocate(2): libc's own.
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class OutputFile:
    """One stream's file; `offset` is how much of it has been handed on."""

    def __init__(self, stream: str, path: Path, offset: int = 0) -> None:
        self.stream = stream
        self.path = path
        self.offset = offset
        self.released = 0  # the file's blocks before this were given back
        self._fd: int | None = None
        self._can_release = True

    def read_new(self, chunk: int) -> bytes:
        """Up to chunk bytes past the offset (b"" if none, or no file yet)."""
        if self._fd is None and not self._open():
            return b""
        assert self._fd is not None
        data = os.pread(self._fd, chunk, self.offset)
        self.offset += len(data)
        return data

    def _open(self) -> bool:
        try:  # for writing too: punching holes needs it
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except PermissionError:
            self._can_release = False
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        return True

    def release(self, keep: int) -> None:
        """Give the blocks of what was handed on back to the filesystem, but for its
        last `keep` bytes (read again after a restart, for the record's tail). The
        file keeps its size, so offsets stay valid; the holes read as zeros."""
        end = (self.offset - keep) // BLOCK * BLOCK
        if self._fd is None or not self._can_release or end - self.released < RELEASE_STEP:
            return
        if _LIBC.fallocate(
            self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, self.released, end - self.released
        ):
            code = ctypes.get_errno()
            self._can_release = False
            log.warning(
                "%s: cannot give back its handed-on output (%s): it grows with the job",
                self.path,
                errno.errorcode.get(code, code),
            )
            return
        self.released = end

    def handed_on(self, limit: int) -> bytes:
        """The last `limit` bytes before the offset: what was handed on already (by
        the agent before a restart), for the record's output tail."""
        start = max(0, self.offset - limit)
        try:
            with open(self.path, "rb") as file:
                with contextlib.suppress(OSError):  # not past what was given back
                    start = min(self.offset, max(start, file.seek(start, os.SEEK_DATA)))
                file.seek(start)
                return file.read(self.offset - start)
        except FileNotFoundError:
            return b""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def follow(
    files: Sequence[OutputFile],
    on_output: Callable[[str, bytes], Awaitable[None]],
    chunk: int,
    ended: asyncio.Event,
    keep: int,
) -> None:
    """Hand on what the files gain until `ended` is set and a pass after it finds
    nothing more: all a job wrote before its end is handed on. All but the last
    `keep` bytes of what was handed on is given back to the filesystem."""
    wait = POLL_MIN
    while True:
        last_pass = ended.is_set()
        got = False
        for file in files:
            while data := file.read_new(chunk):
                got = True
                await on_output(file.stream, data)
            file.release(keep)
        if last_pass:
            return
        wait = POLL_MIN if got else min(wait * 2, POLL_MAX)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), wait)
