"""The fleet_list verb: the fleet runs newest first, a page at a time, each as its summary.

A summary is what the group record holds (its id, time, command, selector, target count,
state and, once it has ended, its counts by result), never its hosts' parts: a page of
runs costs a read of their records alone, whatever their size. The per-host results of
a run still rolling out are fleet_get's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from schedagent.core.fleet import GROUP_ID_RE, Group
from schedagent.errors import SpecError
from schedagent.etcd.groupstore import GroupStore

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CMD_CHARS = 200
# Record bytes one request decodes at most before it stops early (with `next`): a group
# of 10,000 targets is ~200 KiB and tens of ms of CPU, so a page of large runs is a few
# replies of a fraction of a second each, never seconds of one agent's loop; 2 MiB
# still holds hundreds of runs of tens of hosts.
READ_BUDGET = 2 << 20


def list_request(req: dict[str, Any]) -> tuple[int, str | None]:
    """A fleet_list request's limit and `before` group id, checked."""
    limit = req.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT:
        raise SpecError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    before = req.get("before")
    if before is not None and (not isinstance(before, str) or not GROUP_ID_RE.match(before)):
        raise SpecError(f"before must be a fleet run id (g- and 20 hex digits), got {before!r}")
    return limit, before


def state_of(group: Group) -> str:
    if group.canceled:
        return "canceled"
    return "ended" if group.done else "rolling out"


def summary(group: Group) -> dict[str, Any]:
    """One run as fleet_list lists it."""
    cmd = str(group.definition.job["cmd"])
    return {
        "id": group.id,
        "accepted_at": group.accepted_at,
        "cmd": cmd[:CMD_CHARS],
        "cmd_cut": len(cmd) > CMD_CHARS,
        "selector": group.definition.selector.to_dict(),
        "targets": len(group.targets),
        "offline_at_accept": sum(not t.online for t in group.targets),
        "state": state_of(group),
        "done": group.done,
        "canceled": group.canceled,
        # The record's own counts, written when every target has ended.
        "counts": dict(group.counts) if group.done else None,
        "key_id": group.signature.key_id,
        "schedule": None if group.schedule is None else group.schedule.get("name"),
    }


class FleetList:
    """fleet_list: `{"limit": N, "before": GROUP or null}` -> `{"runs": [...], "next"}`,
    `next` the id to ask again `before` (null: no older run)."""

    def __init__(self, groups: GroupStore, max_payload: Callable[[], int]) -> None:
        self.groups = groups
        self.max_payload = max_payload

    async def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        limit, before = list_request(req)
        # A reply stays under half of NATS' max_payload (a --nodes selector can be long).
        budget = self.max_payload() // 2
        read = READ_BUDGET
        out: list[dict[str, Any]] = []
        # One more than asked for: whether an older run exists decides `next`.
        picked = self.groups.newest(before, limit + 1)
        async with contextlib.aclosing(picked) as groups:
            async for kv, group in groups:
                entry = summary(group)
                budget -= len(json.dumps(entry))
                read -= len(kv.value)
                if out and (len(out) == limit or budget < 0 or read < 0):
                    return {"runs": out, "next": out[-1]["id"]}
                out.append(entry)
        return {"runs": out, "next": None}
