"""Mirror tells its listeners of each changed entry and of each full read (in-memory etcd)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from schedagent.dev.memstore import MemStore
from schedagent.etcd.mirror import Entry, Mirror

Seen = list[tuple[str, str | None, str | None]]
Watched = tuple[MemStore, Mirror[str], Seen, list[int]]


def decode(key: str, raw: bytes) -> str | None:
    return None if raw == b"skip" else raw.decode()


@pytest.fixture
async def watched() -> AsyncIterator[Watched]:
    store = MemStore()
    store.put("p/a", b"1")
    mirror: Mirror[str] = Mirror(store, "p/", decode)  # type: ignore[arg-type]
    seen: Seen = []
    resets: list[int] = []

    def on_change(key: str, old: Entry[str] | None, new: Entry[str] | None) -> None:
        seen.append((key, old and old.value, new and new.value))

    mirror.listen(on_change, lambda: resets.append(len(mirror.items)))
    task = asyncio.create_task(mirror.run())
    await mirror.synced.wait()
    try:
        yield store, mirror, seen, resets
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_a_full_read_is_a_reset_not_a_change_per_key(watched: Watched) -> None:
    _, mirror, seen, resets = watched
    assert resets == [1] and seen == []
    assert mirror.items["p/a"].value == "1"


async def test_puts_updates_and_deletes_reach_the_listener(watched: Watched) -> None:
    store, _, seen, _ = watched
    store.put("p/b", b"2")
    store.put("p/a", b"3")
    store.delete("p/b")
    store.put("p/a", b"skip")  # decodes to nothing: gone from the view
    store.put("other/x", b"9")
    await store.delivered()
    assert seen == [
        ("p/b", None, "2"),
        ("p/a", "1", "3"),
        ("p/b", "2", None),
        ("p/a", "3", None),
    ]


async def test_an_own_write_is_told_once_and_its_older_events_not_at_all(watched: Watched) -> None:
    store, mirror, seen, _ = watched
    store.put("p/a", b"2")  # an event still on its way...
    revision = store.put("p/a", b"3")
    mirror.note_write("p/a", revision, "3")  # ...when our own later write is noted
    await store.delivered()
    assert seen[0] == ("p/a", "1", "3")
    assert all(new == "3" for _, _, new in seen)  # the older event changed nothing
