"""A job's output file: followed from an offset, and given back once handed on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from schedagent.host.outputfile import RELEASE_STEP, OutputFile, follow

KEEP = 4096
CHUNK = 16384


def content(size: int) -> bytes:
    """Bytes that differ all along (no run of zeros a hole could pass for)."""
    line = b"".join(b"%07d\n" % n for n in range(size // 8 + 1))
    return line[:size]


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


async def follow_while_written(path: Path, data: bytes, keep: int = KEEP) -> bytes:
    """What follow hands on while `data` is appended to path in pieces."""
    out = OutputFile("stdout", path)
    handed: list[bytes] = []
    ended = asyncio.Event()

    async def on_output(_stream: str, piece: bytes) -> None:
        handed.append(piece)

    async def write() -> None:
        for at in range(0, len(data), 65536):
            os.write(fd, data[at : at + 65536])
            await asyncio.sleep(0.001)
        ended.set()

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        await asyncio.gather(write(), follow([out], on_output, CHUNK, ended, keep))
    finally:
        os.close(fd)
        out.close()
    return b"".join(handed)


@pytest.fixture
def holes(tmp_path: Path) -> Path:
    """A directory whose filesystem can punch holes (ext4, xfs, tmpfs, btrfs)."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * (4 * RELEASE_STEP))
    out = OutputFile("stdout", probe, offset=4 * RELEASE_STEP)
    out.read_new(1)  # opens it
    out.release(0)
    out.close()
    if out.released == 0:
        pytest.skip(f"{tmp_path}: its filesystem cannot punch holes")
    return tmp_path


async def test_a_long_output_is_handed_on_whole_while_its_file_gives_back_its_blocks(
    holes: Path,
) -> None:
    path, data = holes / "job.out", content(6 * RELEASE_STEP)
    assert await follow_while_written(path, data) == data
    assert os.stat(path).st_size == len(data)  # offsets stay valid
    assert allocated(path) <= KEEP + RELEASE_STEP + 65536, allocated(path)
    assert path.read_bytes()[-KEEP:] == data[-KEEP:]


async def test_after_a_restart_the_tail_is_read_back_without_the_holes(holes: Path) -> None:
    path, data = holes / "job.out", content(3 * RELEASE_STEP + 12345)
    await follow_while_written(path, data)
    resumed = OutputFile("stdout", path, offset=len(data))
    # The next agent keeps more of the tail than this one did: only what is left.
    tail = resumed.handed_on(2 * RELEASE_STEP)
    assert KEEP <= len(tail) < 2 * RELEASE_STEP
    assert tail == data[-len(tail) :]
    assert resumed.handed_on(100) == data[-100:]


async def test_a_short_output_keeps_its_file_whole(holes: Path) -> None:
    path, data = holes / "job.out", content(RELEASE_STEP // 2)
    assert await follow_while_written(path, data) == data
    assert path.read_bytes() == data
