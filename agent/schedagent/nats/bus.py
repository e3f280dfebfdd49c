"""The NATS side: one connection, the JetStream streams, and the messages we publish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.api as jsapi
import nats.js.errors

from schedagent.config import NatsConfig, OutputConfig
from schedagent.core.model import SCHEMA_VERSION, Job
from schedagent.core.names import Subjects

log = logging.getLogger(__name__)

EVENTS_MAX_AGE = 7 * 86400.0
DISPATCH_MAX_AGE = 86400.0
CLOSE_TIMEOUT = 5.0
# A server whose host lost power sends no FIN: only unanswered pings reveal it. nats-py
# pings every 120 s and gives up after 2, so an agent would stay deaf for minutes;
# this notices in about 10 s and moves to another server.
PING_INTERVAL = 3.0
MAX_OUTSTANDING_PINGS = 3
DEFAULT_MAX_PAYLOAD = 1024 * 1024


def without_secrets(urls: Sequence[str]) -> str:
    """URLs as logs and STATUS= may show them: scheme, host and port, no user:password."""
    shown = []
    for url in urls:
        parts = urlsplit(url)
        shown.append(f"{parts.scheme}://{parts.hostname}:{parts.port}")
    return ",".join(shown)


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts only this CA and checks the server's name."""
    try:
        # With a cafile, the system's CAs are not loaded: only ours is trusted.
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise OSError(f"cannot load the NATS CA certificate {ca_file}: {reason}") from None


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps({"v": SCHEMA_VERSION, **body}, separators=(",", ":")).encode()


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

    @property
    def connected(self) -> bool:
        return bool(self.nc is not None and self.nc.is_connected)

    async def connect(self) -> None:
        # The first connect fails fast so the caller can report why and retry; once
        # connected, reconnect forever (nats-py reads these options on each attempt).
        tls = tls_context(self.config.tls_ca) if self.config.tls_ca else None
        self.nc = await nats.connect(
            servers=list(self.config.urls),
            name=f"schedagent {self.name}",
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            drain_timeout=CLOSE_TIMEOUT,
            allow_reconnect=False,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            tls=tls,
        )
        self.nc.options["allow_reconnect"] = True
        self.nc.options["max_reconnect_attempts"] = -1
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

    async def publish_dispatch(self, node: str, job_id: str, attempt: int) -> None:
        body = encode({"job": job_id, "attempt": attempt})
        await self.js.publish(self.subjects.dispatch(node), body, timeout=5)

    def max_payload(self) -> int:
        """The largest message the server takes (1 MiB unless configured otherwise)."""
        return int(self.nc.max_payload) if self.nc is not None else DEFAULT_MAX_PAYLOAD

    async def publish_event(self, job: Job) -> None:
        """Tell followers about a state change; etcd already holds the truth."""
        body = encode(
            {
                "job": job.id,
                "state": str(job.state),
                "attempt": job.attempt,
                "node": job.node,
                "exit_code": job.exit_code,
                "reason": job.reason,
                "time": time.time(),
            }
        )
        await self.publish(self.subjects.events(job.id), body)

    async def publish(self, subject: str, body: bytes) -> None:
        """A fire-and-forget publish (the stream captures it); never raises."""
        try:
            await self.nc.publish(subject, body)
        except (nats.errors.Error, OSError) as exc:
            log.info("could not publish on %s: %s", subject, exc)
