"""schedctl following a job: its output as it comes, its events, until its final record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schedagent.core import wire
from schedagent.core.model import FINAL_STATES
from schedagent.ctl.client import (
    ApiError,
    Client,
    CtlError,
    Record,
    field,
    is_final,
    reason_of,
)
from schedagent.ctl.waitlimit import WaitLimit
from schedagent.errors import WireError

# Events are only a hint; this poll is what guarantees a follower ends.
POLL_INTERVAL = 3.0
# The worker may finish the record a moment before its last chunks land in the stream.
EOF_GRACE = 3.0
# `logs` gives up on a stream that goes quiet before the last chunk it expected.
CATCH_UP_IDLE = 5.0

ChunkWriter = Callable[[str, str], None]


async def _unsubscribe(sub: Subscription | None) -> None:
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class OutputReader:
    """Turns a job's output messages into chunk writes and remembers which attempts ended."""

    def __init__(self, job_id: str, write: ChunkWriter) -> None:
        self.job_id = job_id
        self.write = write
        self.eofs: set[int] = set()
        self.last_seq = 0
        self.progress = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.progress.set()
        with contextlib.suppress(nats.errors.Error):
            seq = msg.metadata.sequence.stream
            # A consumer rebuilt after a reconnect may overlap the one it replaced.
            if seq <= self.last_seq:
                return
            self.last_seq = seq
        try:
            body = wire.parse_output(msg.data)
        except WireError:
            return
        if body.job != self.job_id:
            return
        if isinstance(body, wire.OutputEnd):
            self.eofs.add(body.attempt)
        else:
            self.write(body.stream, body.data)

    async def wait(self, done: Callable[[], bool], idle: float) -> bool:
        """Wait until done() holds; False once no message came for `idle` seconds."""
        while not done():
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), idle)
            except TimeoutError:
                return done()
        return True


async def dump_output(client: Client, job_id: str, write: ChunkWriter) -> bool:
    """Write what the output stream holds for a job; False if it holds nothing."""
    last = await client.last_seq("output", job_id)
    if last is None:
        return False
    reader = OutputReader(job_id, write)
    sub = None
    try:
        sub = await client.subscribe("output", job_id, reader.on_msg)
        await reader.wait(lambda: reader.last_seq >= last, CATCH_UP_IDLE)
    except (nats.errors.Error, TimeoutError) as exc:
        raise CtlError(f"cannot read the output stream: {reason_of(exc)}") from None
    finally:
        await _unsubscribe(sub)
    return True


class JobFollower:
    """Streams a job's output as it comes and returns the job's final record."""

    def __init__(
        self, client: Client, job_id: str, write: ChunkWriter, limit: WaitLimit | None = None
    ) -> None:
        self.client = client
        self.job_id = job_id
        # How long to wait, and on a job that stays unplaceable (None: until final).
        self.limit = limit or WaitLimit()
        self.output = OutputReader(job_id, write)
        self._wake = asyncio.Event()
        self._subs: list[Subscription | None] = []

    async def run(self) -> Record:
        self.client.keep_reconnecting()
        self.client.on_reconnect = self._wake.set
        await self._subscribe()
        try:
            record = await self._until_final()
            await self._resubscribe_if_reconnected()
            await self._drain_last_attempt(record)
            return record
        finally:
            await self._unsubscribe()

    async def _subscribe(self) -> None:
        start = self.output.last_seq + 1
        self._subs = [
            await self._try_subscribe("output", self.output.on_msg, start),
            await self._try_subscribe("events", self._on_event, 1),
        ]

    async def _unsubscribe(self) -> None:
        for sub in self._subs:
            await _unsubscribe(sub)
        self._subs = []

    async def _resubscribe_if_reconnected(self) -> None:
        # An ordered consumer lives in the server's memory: a restarted server forgot it,
        # and nats-py would only notice after missed heartbeats. Resume where output stopped.
        if self.client.reconnected.is_set():
            self.client.reconnected.clear()
            await self._unsubscribe()
            await self._subscribe()

    async def _try_subscribe(
        self, kind: str, cb: Callable[[Msg], Any], start: int
    ) -> Subscription | None:
        # Without the stream (not created yet, JetStream down) polling `get` still ends the wait.
        try:
            return await self.client.subscribe(kind, self.job_id, cb, start)
        except (nats.errors.Error, TimeoutError):
            return None

    async def _on_event(self, msg: Msg) -> None:
        with contextlib.suppress(WireError):
            if wire.parse_event(msg.data).state in FINAL_STATES:
                self._wake.set()

    async def _until_final(self) -> Record:
        while True:
            # Cleared before asking so an event that lands during the request is not lost.
            self._wake.clear()
            await self._resubscribe_if_reconnected()
            reply = await self._try_get()
            record = None if reply is None else reply["job"]
            if record is not None and is_final(record):
                return dict(record)
            # Raises WaitGaveUp once the wait's bounds are passed.
            self.limit.check(self.job_id, reply)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.limit.pause(POLL_INTERVAL))

    async def _try_get(self) -> Record | None:
        """The `get` reply (the record and why it is pending), None if none came."""
        try:
            reply = await self.client.call("get", {"id": self.job_id})
            field(reply, "job", dict)  # a reply without its record counts as none
            return reply
        except ApiError as exc:
            if exc.code == "not_found":
                raise
            return None
        except (CtlError, nats.errors.Error, TimeoutError):
            return None

    async def _drain_last_attempt(self, record: Record) -> None:
        attempts = record.get("attempts") or []
        last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
        if last.get("started_at") is None:
            return
        number = int(last.get("n") or record.get("attempt") or 0)
        # Idle-based rather than a hard cap: a backlog still arriving is output worth keeping.
        await self.output.wait(lambda: number in self.output.eofs, EOF_GRACE)
