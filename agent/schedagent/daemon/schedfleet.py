"""The leader's side of fleet schedules: a slot's group, whether one still runs, replace.

A slot's group takes its targets when the slot fires: the known hosts its selector
matches then. So a host that joins later is in the next slot's group and in none of
the slots before it, whatever catch-up fires late (nomad#17395).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

from schedagent.core.fleet import Group, parse_selector, snapshot
from schedagent.core.names import Keys
from schedagent.core.schedfleet import slot_group
from schedagent.core.schedule import Schedule
from schedagent.errors import NotFoundError
from schedagent.etcd.groupstore import GroupStore
from schedagent.etcd.store import Compare, Store

log = logging.getLogger(__name__)

CANCEL_TRIES = 3
NO_HOSTS = "no known host matches the fleet schedule's selector"


class SlotGroups:
    def __init__(self, store: Store, keys: Keys, fence: Sequence[Compare]) -> None:
        self.groups = GroupStore(store, keys)
        self.fence = list(fence)

    async def make(self, schedule: Schedule, slot: int) -> Group | None:
        """The slot's group with the hosts matching now; None if none does."""
        assert schedule.definition.fleet is not None
        selector = parse_selector(schedule.definition.fleet["selector"])
        known, online = await self.groups.hosts()
        targets = snapshot(selector, known, online)
        if not targets:
            return None
        return slot_group(schedule, slot, targets, time.time())

    async def live(self, group_ids: Sequence[str]) -> set[str]:
        """The groups that still run: a target without a final result (a part not
        ended, or a host whose part is not made yet)."""
        found = set()
        for group_id in group_ids:
            try:
                group, _ = await self.groups.get(group_id)
            except NotFoundError:
                continue
            if not group.done and await self.groups.unfinished(group):
                found.add(group_id)
        return found

    async def exists(self, group_id: str) -> bool:
        try:
            await self.groups.get(group_id)
        except NotFoundError:
            return False
        return True

    async def cancel(self, group_id: str, name: str) -> None:
        """Cancel an earlier slot's group (concurrency replace), fenced, as `schedctl
        cancel GROUP` does: the fleet loop skips its waiting hosts, cancels live parts."""
        for _ in range(CANCEL_TRIES):  # the group may change under us (its end)
            try:
                group, revision = await self.groups.get(group_id)
            except NotFoundError:
                return
            if group.canceled or group.done:
                return
            canceled = dataclasses.replace(group, canceled=True)
            if await self.groups.replace(canceled, revision, self.fence):
                log.info("schedule %s: canceled fleet run %s (replace)", name, group_id)
                return
