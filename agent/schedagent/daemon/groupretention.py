"""Retention of fleet runs: a group record goes once every one of its parts' jobs has."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from schedagent.etcd.groupstore import GroupStore
from schedagent.etcd.store import Compare

log = logging.getLogger(__name__)


async def sweep_groups(groups: GroupStore, cutoff: float, fence: Sequence[Compare]) -> int:
    """Delete the ended groups none of whose parts has a record left; how many.

    The group keeps no per-host result of its own (the jobs do), so it lives as long as
    one of its jobs does: `status GROUP` never shows a table with holes. A part ends
    after its group was accepted, so only groups accepted before the job retention's
    cutoff can have lost every part; each is deleted compared on the record as read.
    """
    deleted = 0
    async for kv, group in groups.ended_before(cutoff):
        if await groups.parts(group):
            continue
        if await groups.delete_if_unchanged(kv, fence):
            deleted += 1
    if deleted:
        log.info("retention: deleted %d fleet run(s) whose jobs are all gone", deleted)
    return deleted
