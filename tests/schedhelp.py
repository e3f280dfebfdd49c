"""Helpers for the schedule tests: signed schedules over the API, and slots read from marks."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

from apiclient import ApiClient
from schedagent.core.schedule import parse_definition
from schedagent.core.slots import slot_job_id
from schedagent.dev import marks


async def create(api: ApiClient, name: str, cmd: str, **fields: Any) -> dict[str, Any]:
    """A schedule signed with the harness key, as schedctl makes one."""
    raw = {"name": name, "job": {"cmd": cmd}, **fields}
    definition = parse_definition(raw).to_dict()
    signature = api.key.sign_schedule(definition).to_dict()
    body = {"definition": definition, "signature": signature}
    return (await api.call("schedule_create", schedule=body))["schedule"]  # type: ignore[no-any-return]


async def action(api: ApiClient, verb: str, name: str) -> dict[str, Any]:
    """A signed pause, resume, delete or run of the schedule as it is now."""
    schedule = (await api.call("schedule_get", name=name))["schedule"]
    signature = api.key.sign_schedule_action(verb, name, schedule["signature"]["value"])
    return await api.call(f"schedule_{verb}", name=name, signature=signature.to_dict())


def slot_of(job_id: str) -> int:
    """The slot a schedule's job id names (its first 48 bits are the slot in ms)."""
    return int(job_id[:12], 16) // 1000


def slot_starts(path: Path, name: str) -> dict[int, list[marks.Mark]]:
    """The start marks of the schedule's runs, by slot; a job whose id is not the slot's
    (none should be) is reported under slot -1."""
    found: dict[int, list[marks.Mark]] = collections.defaultdict(list)
    for mark in marks.read_file(path):
        if mark.kind != "start":
            continue
        slot = slot_of(mark.job)
        found[slot if slot_job_id(name, slot) == mark.job else -1].append(mark)
    return dict(found)


async def wait_for_slots(path: Path, name: str, count: int, deadline: float) -> None:
    end = time.monotonic() + deadline
    while len(slot_starts(path, name)) < count:
        if time.monotonic() > end:
            raise AssertionError(f"{name}: fewer than {count} slots ran in {deadline}s")
        await asyncio.sleep(0.1)


async def quiesce(api: ApiClient, names: list[str]) -> None:
    """Pause the schedules, then wait until none of their runs is live."""
    for name in names:
        await action(api, "pause", name)
    end = time.monotonic() + 60
    while True:
        live = [
            j
            for j in await api.list_all()
            if j["state"] not in ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")
        ]
        if not live:
            return
        if time.monotonic() > end:
            raise AssertionError(f"runs still live after pausing: {[j['id'] for j in live]}")
        await asyncio.sleep(0.2)
