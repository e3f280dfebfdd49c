"""Small helpers shared by the tests: waiting with deadlines, finding processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import nats.errors
import psutil


def marker() -> int:
    """A sleep duration no other process on the machine is likely to use."""
    return 100000 + uuid.uuid4().int % 800000


def live_processes_with(text: str) -> list[psutil.Process]:
    """Processes whose command line holds text; zombies (already dead) excluded."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if text in " ".join(proc.info["cmdline"] or []) and proc.info["status"] != "zombie":
            found.append(proc)
    return found


async def wait_until(predicate: Callable[[], bool], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_until_served(nc: Any, deadline: float, prefix: str = "sched") -> None:
    """Until some agent answers the API (after NATS or the agents restarted: each
    subscribes again on its own time)."""
    end = time.monotonic() + deadline
    while True:
        try:
            await nc.request(f"{prefix}.api.leader", b'{"v": 1}', timeout=1)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > end:
                raise AssertionError(f"no agent answers after {deadline}s") from None
            await asyncio.sleep(0.1)
