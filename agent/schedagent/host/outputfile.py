"""A job's output file, followed from an offset while something else appends to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

# How often a file that has nothing new is looked at again: soon after output (more
# is likely to follow), then less and less often while the job is quiet.
POLL_MIN = 0.02
POLL_MAX = 0.25


class OutputFile:
    """One stream's file; `offset` is how much of it has been handed on."""

    def __init__(self, stream: str, path: Path, offset: int = 0) -> None:
        self.stream = stream
        self.path = path
        self.offset = offset
        self._fd: int | None = None

    def read_new(self, chunk: int) -> bytes:
        """Up to chunk bytes past the offset (b"" if none, or no file yet)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""
        data = os.pread(self._fd, chunk, self.offset)
        self.offset += len(data)
        return data

    def handed_on(self, limit: int) -> bytes:
        """The last `limit` bytes before the offset: what was handed on already (by
        the agent before a restart), for the record's output tail."""
        start = max(0, self.offset - limit)
        try:
            with open(self.path, "rb") as file:
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
) -> None:
    """Hand on what the files gain until `ended` is set and a pass after it finds
    nothing more: all a job wrote before its end is handed on."""
    wait = POLL_MIN
    while True:
        last_pass = ended.is_set()
        got = False
        for file in files:
            while data := file.read_new(chunk):
                got = True
                await on_output(file.stream, data)
        if last_pass:
            return
        wait = POLL_MIN if got else min(wait * 2, POLL_MAX)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), wait)
