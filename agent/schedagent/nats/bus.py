"""The NATS side: one connection, the JetStream streams, and the messages we publish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.api as jsapi
import nats.js.errors

from schedagent.config import NatsConfig, OutputConfig
from schedagent.core import wire
from schedagent.core.model import Job
from schedagent.core.names import Subjects
from schedagent.nats.connect import connect, keep_reconnecting, tls_context

log = logging.getLogger(__name__)

EVENTS_MAX_AGE = 7 * 86400.0
DISPATCH_MAX_AGE = 86400.0
CLOSE_TIMEOUT = 5.0
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class Bus:
    """A NATS connection that reconnects forever and says so in the log."""

    def __init__(self, config: NatsConfig, output: OutputConfig, name: str) -> None:
        self.config = config
        self.output_config = output
        self.subjects = Subjects(config.prefix)
        self.name = name
        self.nc: Any = None
        self.js: Any = None
        self.last_problem: str | None = None
        # Counts reconnects; whoever must redo something after one (the worker's
        # consumer check, the reconciler) compares it or waits on `reconnected`.
        self.reconnects = 0
        self.reconnected = asyncio.Event()
        # The metrics' ears: a JetStream publish's round trip (seconds, whether it
        # failed), and each fire-and-forget publish that failed.
        self.on_round_trip: Callable[[float, bool], None] = _not_observed
        self.on_publish_error: Callable[[], None] = _nothing

    @property
    def connected(self) -> bool:
        return bool(self.nc is not None and self.nc.is_connected)

    async def connect(self) -> None:
        # The first connect fails fast so the caller can report why and retry; once
        # connected, reconnect forever.
        self.nc = await connect(
            self.config.urls,
            name=f"schedagent {self.name}",
            tls=tls_context(self.config.tls_ca) if self.config.tls_ca else None,
            connect_timeout=2,
            reconnect_time_wait=0.5,
            drain_timeout=CLOSE_TIMEOUT,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        keep_reconnecting(self.nc)
        self.js = self.nc.jetstream()
        await self.ensure_streams()

    async def close(self) -> None:
        if self.nc is None or self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), CLOSE_TIMEOUT)
        except (TimeoutError, nats.errors.Error) as exc:
            log.info("NATS drain at exit did not finish (%s); closing", exc or "timeout")
            # With the server gone, close() fails flushing: nothing is left to lose.
            with contextlib.suppress(OSError):
                await self.nc.close()

    async def _on_error(self, exc: Exception) -> None:
        problem = f"NATS: {exc or type(exc).__name__}"
        if problem != self.last_problem:
            log.warning("%s", problem)
        self.last_problem = problem

    async def _on_disconnected(self) -> None:
        log.warning("disconnected from NATS; reconnecting")
        self.last_problem = "disconnected from NATS"

    async def _on_reconnected(self) -> None:
        url = self.nc.connected_url
        log.info("reconnected to NATS at %s:%s", url.hostname, url.port)
        self.last_problem = None
        self.reconnects += 1
        self.reconnected.set()

    async def ensure_streams(self) -> None:
        s = self.subjects
        out = self.output_config
        await self._ensure(
            jsapi.StreamConfig(
                name=s.dispatch_stream,
                subjects=[s.all("dispatch")],
                retention=jsapi.RetentionPolicy.WORK_QUEUE,
                max_age=DISPATCH_MAX_AGE,
                storage=jsapi.StorageType.FILE,
                num_replicas=self.config.stream_replicas,
            )
        )
        await self._ensure(
            jsapi.StreamConfig(
                name=s.events_stream,
                subjects=[s.all("events")],
                max_age=EVENTS_MAX_AGE,
                storage=jsapi.StorageType.FILE,
                num_replicas=self.config.stream_replicas,
            )
        )
        await self._ensure(
            jsapi.StreamConfig(
                name=s.output_stream,
                subjects=[s.all("output")],
                max_bytes=out.stream_max_bytes,
                max_age=out.stream_max_age,
                storage=jsapi.StorageType.FILE,
                num_replicas=self.config.stream_replicas,
            )
        )

    async def _ensure(self, config: jsapi.StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Another agent made it first, maybe with older limits: bring it up to date.
            await self.js.update_stream(config)

    async def publish_dispatch(self, node: str, job: Job, revision: int) -> None:
        """Tell node to start the job's attempt: the record as written at revision."""
        body = wire.dispatch(job.id, job.attempt, job.to_json(), revision)
        subject = self.subjects.dispatch(node)
        try:
            await self._acked_publish(subject, body)
        except nats.js.errors.NoStreamResponseError:
            # No stream answers: NATS lost its storage (or someone deleted it).
            log.warning("no stream takes dispatches; making the streams again")
            await self.ensure_streams()
            await self._acked_publish(subject, body)

    async def _acked_publish(self, subject: str, body: bytes) -> None:
        sent = time.perf_counter()
        try:
            await self.js.publish(subject, body, timeout=5)
        except Exception:
            self.on_round_trip(time.perf_counter() - sent, True)
            raise
        self.on_round_trip(time.perf_counter() - sent, False)

    def max_payload(self) -> int:
        """The largest message the server takes (1 MiB unless configured otherwise)."""
        return int(self.nc.max_payload) if self.nc is not None else DEFAULT_MAX_PAYLOAD

    async def publish_event(self, job: Job) -> None:
        """Tell followers about a state change; etcd already holds the truth."""
        body = wire.event(job, time.time())
        await self.publish(self.subjects.events(job.id), body)

    async def publish(self, subject: str, body: bytes) -> None:
        """A fire-and-forget publish (the stream captures it); never raises."""
        try:
            await self.nc.publish(subject, body)
        except (nats.errors.Error, OSError) as exc:
            self.on_publish_error()
            log.info("could not publish on %s: %s", subject, exc)


def _not_observed(seconds: float, failed: bool) -> None:
    pass


def _nothing() -> None:
    pass
