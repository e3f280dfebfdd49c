"""Small helpers shared by the tests: waiting with deadlines, finding processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

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
