"""A leadership's end stops its scheduler: none is left placing from a deposed view."""

from __future__ import annotations

import asyncio

import pytest

from schedagent.daemon.leadership import _lead_until_either_ends


async def test_a_cancelled_leadership_cancels_its_scheduler() -> None:
    # Before: the scheduler ran on after the election cancelled the leadership (a
    # stepped-down or stopping agent), its etcd watches too.
    started, ended = asyncio.Event(), asyncio.Event()

    async def scheduler() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    loop = asyncio.create_task(asyncio.Event().wait())
    leading = asyncio.create_task(_lead_until_either_ends(scheduler(), [loop]))
    await asyncio.wait_for(started.wait(), 5)
    leading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leading
    assert ended.is_set()
    loop.cancel()


async def test_a_failed_loop_ends_the_leadership_with_its_error() -> None:
    ended = asyncio.Event()

    async def scheduler() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    async def fail() -> None:
        raise RuntimeError("fenced")

    failing = asyncio.create_task(fail())
    with pytest.raises(RuntimeError, match="fenced"):
        await asyncio.wait_for(_lead_until_either_ends(scheduler(), [failing]), 5)
    assert ended.is_set()
