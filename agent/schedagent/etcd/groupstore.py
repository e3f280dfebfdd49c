"""Fleet runs in etcd: the group records under groups/, the known hosts under hosts/,
and each group's parts, which are ordinary jobs with ids derived from (group, host).

A part's job is created compared absent under jobs/ and done/ (and the group compared
as read): so a host, whoever starts its part and however often the write is retried,
has one job in a group.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from schedagent.core.fleet import Group, part_job_id
from schedagent.core.model import Job, KnownHost, NodeRecord
from schedagent.core.names import Keys
from schedagent.errors import NotFoundError
from schedagent.etcd import malformed
from schedagent.etcd.jobstore import decode_job, decode_node
from schedagent.etcd.newest import NewestFirst
from schedagent.etcd.store import KV, Absent, Compare, Delete, ModRevisionIs, Op, Put, Store

# Parts per transaction: two compares each (absent live and done) under etcd's 128.
PARTS_PER_TXN = 48
# Keys per read: a part is looked for under jobs/ and done/.
KEYS_PER_READ = 128
# Group records per read in a retention sweep: up to ~300 KiB each (10,000 targets).
GROUPS_PER_READ = 16


def decode_group(kv: KV) -> Group | None:
    """The group in a KV, or None (logged once) if it is not a group record."""
    return malformed.decode("fleet run", kv.key, kv.value, Group.from_json)


def decode_host(kv: KV) -> KnownHost | None:
    return malformed.decode("host", kv.key, kv.value, KnownHost.from_json)


class GroupStore:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys

    async def create(self, group: Group) -> bool:
        """Whether the group was created (False: one with its id exists)."""
        key = self.keys.group(group.id)
        return await self.store.txn([Absent(key)], [Put(key, group.to_json())])

    async def get(self, group_id: str) -> tuple[Group, int]:
        """The group and the revision it was read at; NotFoundError if there is none."""
        kv = await self.store.get(self.keys.group(group_id))
        group = None if kv is None else decode_group(kv)
        if kv is None or group is None:
            raise NotFoundError(f"no fleet run {group_id}")
        return group, kv.mod_revision

    async def replace(self, group: Group, revision: int, fence: Sequence[Compare] = ()) -> bool:
        key = self.keys.group(group.id)
        compares = [*fence, ModRevisionIs(key, revision)]
        return await self.store.txn(compares, [Put(key, group.to_json())])

    async def hosts(self) -> tuple[dict[str, dict[str, str]], set[str]]:
        """Every known host (name -> labels; a live node's labels win) and those online
        now (a live, not draining node record)."""
        known: dict[str, dict[str, str]] = {}
        for kv in (await self.store.get_prefix(self.keys.hosts))[0]:
            host = decode_host(kv)
            if host is not None:
                known[host.name] = dict(host.labels)
        live = await self.nodes()
        known.update((node.name, dict(node.labels)) for node in live)
        return known, {node.name for node in live if not node.draining}

    async def forget(self, name: str) -> bool | None:
        """Forget a host that is gone for good: its hosts/ record and any cordon, so
        `--all` no longer names it. None if it is live (its node record exists: the
        agent would only write hosts/ again); else whether it was known at all."""
        known = await self.store.get(self.keys.host(name)) is not None
        gone = Absent(self.keys.node(name))
        deletes = [Delete(self.keys.host(name)), Delete(self.keys.cordon(name))]
        if not await self.store.txn([gone], deletes):
            return None
        return known

    async def online(self) -> set[str]:
        """The hosts online now: a live, not draining node record."""
        return {node.name for node in await self.nodes() if not node.draining}

    async def nodes(self) -> list[NodeRecord]:
        kvs, _ = await self.store.get_prefix(self.keys.nodes)
        return [node for node in map(decode_node, kvs) if node is not None]

    async def ended_before(self, cutoff: float) -> AsyncIterator[tuple[KV, Group]]:
        """The ended groups accepted before cutoff, a page of records at a time.

        A group id is `g-` and a job id, whose first 12 digits are its millisecond
        clock: only ids below the cutoff's are read, so recent runs cost no sweep."""
        start = self.keys.group("g-")
        end = self.keys.group(f"g-{int(cutoff * 1000):012x}")
        while True:
            page = await self.store.range_page(start, end, GROUPS_PER_READ)
            for kv in page.kvs:
                group = decode_group(kv)
                if group is not None and group.done and group.accepted_at < cutoff:
                    yield kv, group
            if not page.more or not page.kvs:
                return
            start = page.kvs[-1].key + "\0"

    async def newest(
        self, before: str | None, page_size: int
    ) -> AsyncGenerator[tuple[KV, Group], None]:
        """The groups newest first (accepted before the group `before`, if given), each
        with its KV, read a page of at most page_size records at a time, only as far as
        the caller goes.

        A group id is `g-` and a job id, so the keys after `g-` sort by time as job ids
        do, and etcd/newest.py reads them from the newest end without a whole sort."""
        prefix = self.keys.group("g-")
        size = max(1, min(page_size, GROUPS_PER_READ))
        cursor = NewestFirst(self.store, prefix, None if before is None else before[2:], size)
        revision = 0
        while True:
            revision = await cursor.fill(revision)
            if not cursor.buffer:
                return
            kv = cursor.buffer.popleft()
            group = decode_group(kv)
            if group is not None:
                yield kv, group
            # A record of 10,000 targets takes tens of ms to decode: between records,
            # the loop's other tasks (the lease refresh first) run.
            await asyncio.sleep(0)

    async def delete_if_unchanged(self, kv: KV, fence: Sequence[Compare]) -> bool:
        return await self.store.txn(
            [*fence, ModRevisionIs(kv.key, kv.mod_revision)], [Delete(kv.key)]
        )

    async def parts(self, group: Group) -> dict[str, Job]:
        """The jobs the group's targets have so far (host -> job, live or final)."""
        hosts = group.hosts()
        found: dict[str, Job] = {}
        per_read = KEYS_PER_READ // 2
        for first in range(0, len(hosts), per_read):
            chunk = hosts[first : first + per_read]
            ids = [part_job_id(group.id, h) for h in chunk]
            keys = [k for j in ids for k in (self.keys.job(j), self.keys.done_job(j))]
            kvs = await self.store.get_many(keys)
            for index, host in enumerate(chunk):
                kv = kvs[2 * index] or kvs[2 * index + 1]
                job = None if kv is None else decode_job(kv)
                if job is not None:
                    found[host] = job
        return found

    async def unfinished(self, group: Group) -> bool:
        """Whether a target has no final result yet: its part is not under done/ (not
        made yet, or live). Read from the last targets back, as only done/ keys: a
        roll-out starts hosts in target order, so a run under way has hosts not made
        yet at the end, and the answer is usually the first read."""
        hosts = group.hosts()
        for end in range(len(hosts), 0, -KEYS_PER_READ):
            chunk = hosts[max(0, end - KEYS_PER_READ) : end]
            keys = [self.keys.done_job(part_job_id(group.id, host)) for host in chunk]
            if any(kv is None for kv in await self.store.get_many(keys)):
                return True
        return False

    async def add_parts(
        self, group_key: tuple[str, int], jobs: Sequence[Job], fence: Sequence[Compare]
    ) -> bool:
        """Create parts' jobs (live ones under jobs/, ended ones under done/), all or
        nothing, with the group as read (a cancel meanwhile makes it decide again)."""
        group_id, revision = group_key
        compares: list[Compare] = [*fence, ModRevisionIs(self.keys.group(group_id), revision)]
        ops: list[Op] = []
        for job in jobs:
            compares += [Absent(self.keys.job(job.id)), Absent(self.keys.done_job(job.id))]
            where = self.keys.done_job(job.id) if job.state.final else self.keys.job(job.id)
            ops.append(Put(where, job.to_json()))
        return await self.store.txn(compares, ops)
