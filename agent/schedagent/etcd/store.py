"""A typed, small face over aetcd: reads, compare-and-swap transactions, leases, watches."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import aetcd.rpc
import grpc

from schedagent.errors import StoreUnavailableError
from schedagent.etcd.tls import EtcdTls, TlsClient

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    key: str
    value: bytes
    deleted: bool
    mod_revision: int
    create_revision: int


# Compares and operations of a transaction, in our own terms.
@dataclasses.dataclass(frozen=True)
class ModRevisionIs:
    key: str
    revision: int


@dataclasses.dataclass(frozen=True)
class CreateRevisionIs:
    key: str
    revision: int


@dataclasses.dataclass(frozen=True)
class Absent:
    key: str


@dataclasses.dataclass(frozen=True)
class ValueIs:
    """The key exists and holds exactly these bytes."""

    key: str
    value: bytes


@dataclasses.dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclasses.dataclass(frozen=True)
class Delete:
    key: str


Compare = ModRevisionIs | CreateRevisionIs | Absent | ValueIs
Op = Put | Delete

# Keys per range request: a long prefix is read in pages, never in one reply (gRPC
# refuses replies over 4 MiB; a page that is still too large is halved).
PAGE = 256


@dataclasses.dataclass(frozen=True)
class Page:
    """One range reply: its keys, the revision it was read at, and whether more follow."""

    kvs: list[KV]
    revision: int
    more: bool


class _ReplyTooLarge(Exception):
    """A range reply over gRPC's message limit: ask for fewer keys."""


class WatchCompacted(Exception):
    """The revision a watch asked for is gone; the watcher must resync with a read."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"compacted at {compact_revision}")
        self.compact_revision = compact_revision


def grpc_target(endpoints: Sequence[str]) -> tuple[str, int]:
    """Turn etcd URLs into aetcd's (host, port), which it joins as `host:port`.

    Several endpoints become gRPC's `ipv4:h1:p1,h2:p2` target so the channel fails
    over between members by itself; names are resolved to IPv4 addresses once.
    """
    pairs = []
    for url in endpoints:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 2379
        pairs.append((_ipv4(host), port))
    if len(pairs) == 1:
        return pairs[0]
    joined = ",".join(f"{h}:{p}" for h, p in pairs[:-1])
    last_host, last_port = pairs[-1]
    return f"ipv4:{joined},{last_host}", last_port


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with prefix (etcd's range_end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _ipv4(host: str) -> str:
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])


# gRPC backs off up to 2 minutes between reconnects by default: far too long to
# notice that etcd is back. At most 1 s: after an outage of the whole cluster, an
# agent must refresh its lease soon after its peers do, or it stops its jobs
# (core/fencing.py, stop_window). Keepalives find a dead member behind a live socket.
GRPC_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10000,
    "grpc.keepalive_timeout_ms": 3000,
}

WATCH_CANCEL_TIMEOUT = 1.0

_UNAVAILABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
    aetcd.exceptions.WatchTimeoutError,
    asyncio.TimeoutError,
)


class Store:
    """One connection to an etcd cluster."""

    def __init__(
        self, endpoints: Sequence[str], timeout: float = 5.0, tls: EtcdTls | None = None
    ) -> None:
        self.endpoints = tuple(endpoints)
        self._timeout = timeout
        host, port = grpc_target(endpoints)
        where: dict[str, Any] = {"host": host, "port": port, "timeout": timeout}
        self._client: Any = (
            aetcd.Client(options=GRPC_OPTIONS, **where)
            if tls is None
            else TlsClient(tls, GRPC_OPTIONS, **where)
        )
        # Hears every request's round trip (seconds, whether it failed): the metrics.
        self.on_call: Callable[[float, bool], None] = _not_observed

    async def connect(self) -> None:
        await self._call(self._client.connect())

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, coro: Any) -> Any:
        sent = time.perf_counter()
        try:
            result = await coro
        except _UNAVAILABLE as exc:
            _reraise_cancel(exc)
            self.on_call(time.perf_counter() - sent, True)
            raise StoreUnavailableError(
                f"etcd at {','.join(self.endpoints)}: {_one_line(exc)}"
            ) from exc
        except aetcd.exceptions.ClientError as exc:
            _reraise_cancel(exc)
            self.on_call(time.perf_counter() - sent, True)
            raise StoreUnavailableError(f"etcd error: {_one_line(exc)}") from exc
        self.on_call(time.perf_counter() - sent, False)
        return result

    async def get(self, key: str) -> KV | None:
        item = await self._call(self._client.get(key.encode()))
        return None if item is None else _kv(item)

    async def get_first(self, keys: Sequence[str]) -> KV | None:
        """The first of keys that exists, all read in one transaction (one revision)."""
        tx = self._client.transactions
        gets = [tx.get(key.encode()) for key in keys]
        _, responses = await self._call(self._client.transaction([], gets, []))
        for found in responses:
            if found:
                return _kv(found[0][1])
        return None

    async def get_many(self, keys: Sequence[str]) -> list[KV | None]:
        """Each key's KV (None where it is absent), all read in one transaction: at
        most etcd's --max-txn-ops (128) keys."""
        tx = self._client.transactions
        gets = [tx.get(key.encode()) for key in keys]
        _, responses = await self._call(self._client.transaction([], gets, []))
        return [_kv(found[0][1]) if found else None for found in responses]

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under prefix, read a page at a time at one revision, and that revision.

        For prefixes that stay small (nodes); a long one is better read with scan().
        """
        kvs: list[KV] = []
        revision = 0
        async for page in self.scan(prefix):
            kvs.extend(page.kvs)
            revision = page.revision
        return kvs, revision

    async def scan(self, prefix: str, page_size: int = PAGE) -> AsyncIterator[Page]:
        """The keys under prefix in key order, a page at a time, every page read at the
        revision of the first (which each page carries): a consistent snapshot, however
        long, that a watch can resume from. Ends after the page that says no more."""
        start, end = prefix, prefix_end(prefix)
        snapshot = 0
        while True:
            page = await self.range_page(start, end, page_size, revision=snapshot)
            # A reply's header holds the store's current revision, not the one read at.
            snapshot = snapshot or page.revision
            yield dataclasses.replace(page, revision=snapshot)
            if not page.more or not page.kvs:
                return
            start = page.kvs[-1].key + "\0"
            page_size = len(page.kvs)  # shorter than asked only if the keys are large

    async def range_page(
        self, start: str, end: str, limit: int, *, descending: bool = False, revision: int = 0
    ) -> Page:
        """Up to limit keys in [start, end), in key order (or its reverse), at revision
        (0: the latest). Fewer than limit while `more` is set: a page that would not
        fit in one gRPC message is asked for again, halved, until it fits."""
        while True:
            # aetcd's get_range drops the limit; the stub takes the request as etcd defines it.
            request = aetcd.rpc.RangeRequest(
                key=start.encode(),
                range_end=end.encode(),
                limit=limit,
                revision=revision,
                sort_order=aetcd.rpc.RangeRequest.DESCEND if descending else 0,
                sort_target=aetcd.rpc.RangeRequest.KEY,
            )
            try:
                reply = await self._call(self._range(request))
            except _ReplyTooLarge as exc:
                if limit <= 1:
                    raise StoreUnavailableError(f"etcd: one key is too large: {exc}") from exc
                limit //= 2
                continue
            kvs = [_kv(item) for item in reply.kvs]
            return Page(kvs, int(reply.header.revision), bool(reply.more))

    async def count(self, start: str, end: str, revision: int = 0) -> tuple[int, int]:
        """How many keys [start, end) holds at revision (0: the latest), from etcd's
        index alone (no values are read), and the revision of the reply's header."""
        request = aetcd.rpc.RangeRequest(
            key=start.encode(), range_end=end.encode(), count_only=True, revision=revision
        )
        reply = await self._call(self._range(request))
        return int(reply.count), int(reply.header.revision)

    async def _range(self, request: Any) -> Any:
        await self._client.connect()
        try:
            return await self._client.kvstub.Range(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise _ReplyTooLarge(exc.details() or str(exc)) from exc
            raise aetcd.exceptions.ConnectionFailedError(exc.details() or str(exc)) from exc

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        """Apply success ops if every compare holds, else failure ops; True on success."""
        return (await self.txn_revision(compares, success, failure)) != 0

    async def txn_revision(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> int:
        """Like txn, but returns the revision the success ops wrote at (-1 if they were
        reads only), or 0 if a compare failed."""
        tx = self._client.transactions
        cmp = [_compare(tx, c) for c in compares]
        ok_ops = [_op(tx, o) for o in success]
        bad_ops = [_op(tx, o) for o in failure]
        succeeded, responses = await self._call(self._client.transaction(cmp, ok_ops, bad_ops))
        if not succeeded:
            return 0
        for response in responses:
            if response.HasField("response_put"):
                return int(response.response_put.header.revision)
        return -1

    async def txn_or_read(
        self, compares: Sequence[Compare], success: Sequence[Op], reads: Sequence[str]
    ) -> tuple[int, list[KV | None]]:
        """Apply success ops if every compare holds: (their revision, []). Else read
        each of reads in the same round trip: (0, the KV of each key or None)."""
        tx = self._client.transactions
        cmp = [_compare(tx, c) for c in compares]
        ok_ops = [_op(tx, o) for o in success]
        gets = [tx.get(key.encode()) for key in reads]
        succeeded, responses = await self._call(self._client.transaction(cmp, ok_ops, gets))
        if not succeeded:
            return 0, [_kv(found[0][1]) if found else None for found in responses]
        for response in responses:
            if response.HasField("response_put"):
                return int(response.response_put.header.revision), []
        return -1, []

    async def grant_lease(self, ttl: int) -> int:
        lease = await self._call(self._client.lease(ttl))
        return int(lease.id)

    async def refresh_lease(self, lease_id: int) -> int:
        """Keep a lease alive; returns its remaining TTL (0 or less: it has expired)."""
        reply = await self._call(self._client.refresh_lease(lease_id))
        return int(reply.TTL) if reply is not None else 0

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call(self._client.revoke_lease(lease_id))

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under prefix from start_revision; ends or raises when the stream breaks."""
        try:
            watch = await self._call(
                self._client.watch_prefix(prefix.encode(), start_revision=start_revision)
            )
        except StoreUnavailableError as exc:
            if isinstance(exc.__cause__, aetcd.exceptions.RevisionCompactedError):
                raise WatchCompacted(exc.__cause__.compacted_revision) from exc
            raise
        try:
            async for event in _events(watch):
                yield event
        finally:
            await _quietly_cancel(watch)


async def _events(watch: Any) -> AsyncIterator[WatchEvent]:
    try:
        async for ev in watch:
            kv = ev.kv
            yield WatchEvent(
                key=kv.key.decode(),
                value=bytes(kv.value),
                deleted=str(ev.kind.value if hasattr(ev.kind, "value") else ev.kind) == "DELETE",
                mod_revision=int(kv.mod_revision),
                create_revision=int(kv.create_revision),
            )
    except aetcd.exceptions.RevisionCompactedError as exc:
        raise WatchCompacted(exc.compacted_revision) from exc
    except aetcd.exceptions.ClientError as exc:
        _reraise_cancel(exc)
        raise StoreUnavailableError(f"etcd watch: {_one_line(exc)}") from exc


async def _quietly_cancel(watch: Any) -> None:
    # Bounded: aetcd queues the cancel behind a stream that may be stuck or gone.
    try:
        await asyncio.wait_for(watch.cancel(), WATCH_CANCEL_TIMEOUT)
    except Exception:  # the stream may already be gone; nothing to clean up then
        log.debug("watch cancel failed", exc_info=True)


def _not_observed(seconds: float, failed: bool) -> None:
    pass


def _reraise_cancel(exc: BaseException) -> None:
    """gRPC turns a cancelled call into an error; when our task is being cancelled,
    that must stay a cancellation, or retry loops above would swallow it and run on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def _kv(item: Any) -> KV:
    return KV(
        key=item.key.decode(),
        value=bytes(item.value),
        create_revision=int(item.create_revision),
        mod_revision=int(item.mod_revision),
        lease=int(item.lease),
    )


def _compare(tx: Any, c: Compare) -> Any:
    if isinstance(c, ModRevisionIs):
        return tx.mod(c.key.encode()) == c.revision
    if isinstance(c, CreateRevisionIs):
        return tx.create(c.key.encode()) == c.revision
    if isinstance(c, ValueIs):
        return tx.value(c.key.encode()) == c.value
    return tx.version(c.key.encode()) == 0


def _op(tx: Any, o: Op) -> Any:
    if isinstance(o, Put):
        return tx.put(o.key.encode(), o.value, lease=o.lease or None)
    return tx.delete(o.key.encode())


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
