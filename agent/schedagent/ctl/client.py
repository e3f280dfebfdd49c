"""schedctl's NATS side: connect, call API verbs, read a job's stream messages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from schedagent.core import wire
from schedagent.core.model import FINAL_STATES
from schedagent.ctl.exits import EXIT_ERROR, EXIT_NO_CLUSTER, EXIT_NOT_FOUND
from schedagent.errors import SchedagentError, WireError
from schedagent.nats.connect import connect, keep_reconnecting, tls_context, without_secrets

# A timed-out submit may still have been applied; the idempotency key makes resending safe.
SUBMIT_RETRY_WINDOW = 10.0
SUBMIT_RETRY_PAUSE = 0.5
# An agent checks each spec's signature and writes 42 jobs per etcd transaction: give a
# batch more time than one request gets, in proportion to its size.
BATCH_SECONDS_PER_SPEC = 0.005
# nats-py rebuilds an ordered consumer that missed two heartbeats; keep that short.
IDLE_HEARTBEAT = 2.0

Record = dict[str, Any]


class CtlError(SchedagentError):
    """A failure schedctl reports as one line on stderr, with its exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoAgentError(CtlError):
    def __init__(self, url: str, waited: float) -> None:
        super().__init__(f"no agent answered on {url} within {waited:g} s", EXIT_NO_CLUSTER)


class ApiError(CtlError):
    """An `ok:false` reply."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, EXIT_NOT_FOUND if code == "not_found" else EXIT_ERROR)
        self.code = code


def is_final(record: Record) -> bool:
    return record.get("state") in FINAL_STATES


def field(reply: Record, name: str, kind: type[Any]) -> Any:
    """Fetch a reply field, as a CtlError if an agent sent something unexpected."""
    value = reply.get(name)
    if not isinstance(value, kind):
        raise CtlError(f"malformed reply from agent: {name!r} is missing or not a {kind.__name__}")
    return value


def _parse_reply(raw: bytes) -> Record:
    try:
        reply = wire.parse_reply(raw)
    except WireError as exc:
        raise CtlError(f"malformed reply from agent: {exc}") from None
    if reply.get("ok") is not True:
        error = reply.get("error") or "request failed"
        raise ApiError(str(error), str(reply.get("code") or "internal"))
    return reply


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Client:
    """One NATS connection to a schedagent cluster."""

    def __init__(self, url: str, prefix: str, timeout: float, ca_file: str | None = None) -> None:
        self.url = url
        self.ca_file = ca_file
        # What messages show: never the user:password a URL may carry.
        self.shown_url = without_secrets(url.split(","))
        self.prefix = prefix
        self.timeout = timeout
        self._nc: Nats | None = None
        self.reconnected = asyncio.Event()
        self.on_reconnect: Callable[[], None] | None = None

    @property
    def nc(self) -> Nats:
        if self._nc is None:
            raise CtlError("not connected to NATS")
        return self._nc

    def stream(self, kind: str) -> str:
        return f"{self.prefix.upper().replace('.', '_')}_{kind.upper()}"

    async def connect(self) -> None:
        errors: list[BaseException] = []

        async def remember(exc: Exception) -> None:
            errors.append(exc)

        async def ignore() -> None:
            return None

        async def reconnected() -> None:
            self.reconnected.set()
            if self.on_reconnect is not None:
                self.on_reconnect()

        try:
            tls = tls_context(self.ca_file) if self.ca_file else None
        except OSError as exc:
            raise CtlError(str(exc), EXIT_NO_CLUSTER) from None
        try:
            self._nc = await connect(
                self.url.split(","),
                name="schedctl",
                tls=tls,
                connect_timeout=self.timeout,
                reconnect_time_wait=0.2,
                error_cb=remember,
                disconnected_cb=ignore,
                reconnected_cb=reconnected,
                closed_cb=ignore,
            )
        except Exception as exc:
            reason = reason_of(errors[-1] if errors else exc)
            raise CtlError(
                f"cannot connect to NATS at {self.shown_url}: {reason}", EXIT_NO_CLUSTER
            ) from None

    def keep_reconnecting(self) -> None:
        """Let a long follow survive a NATS restart; the first connect still fails fast."""
        keep_reconnecting(self.nc, attempts=120, wait=1.0)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def list_jobs(self, state: str | None, limit: int) -> list[Record]:
        """Up to limit jobs, newest first, over as many replies as their size needs."""
        jobs: list[Record] = []
        before = None
        while len(jobs) < limit:
            body = {"state": state, "limit": limit - len(jobs), "before": before}
            reply = await self.call("list", body)
            jobs.extend(field(reply, "jobs", list))
            before = reply.get("next")
            if not before:
                break
        return jobs

    async def call(self, verb: str, body: Record | None = None) -> Record:
        return await self._request(verb, wire.request(body), self.timeout)

    async def _request(self, verb: str, payload: bytes, within: float) -> Record:
        """One request and its reply, waiting `within` seconds for an agent to answer."""
        try:
            msg = await self.nc.request(f"{self.prefix}.api.{verb}", payload, timeout=within)
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise NoAgentError(self.shown_url, within) from None
        except nats.errors.Error as exc:
            raise CtlError(
                f"request to {self.shown_url} failed: {reason_of(exc)}", EXIT_NO_CLUSTER
            ) from None
        return _parse_reply(msg.data)

    async def submit(self, spec: Record) -> Record:
        """Submit, resending with the same idempotency key while no agent answers."""
        return await self._resending(lambda: self.call("submit", {"spec": spec}))

    async def submit_many(self, specs: list[Record]) -> list[wire.Submitted]:
        """Submit a batch (at most wire.MAX_SUBMIT_BATCH), resent like `submit`; a
        result per spec, in order."""
        within = self.timeout + len(specs) * BATCH_SECONDS_PER_SPEC
        payload = wire.submit_many(specs)
        reply = await self._resending(lambda: self._request("submit_many", payload, within))
        try:
            return wire.parse_submitted(reply, len(specs))
        except WireError as exc:
            raise CtlError(f"malformed reply from agent: {exc}") from None

    async def _resending(self, send: Callable[[], Awaitable[Record]]) -> Record:
        # A timed-out submit may have been applied: only idempotency keys make this safe.
        started = time.monotonic()
        while True:
            try:
                return await send()
            except NoAgentError:
                waited = time.monotonic() - started
                if waited + SUBMIT_RETRY_PAUSE >= SUBMIT_RETRY_WINDOW:
                    raise NoAgentError(self.shown_url, round(waited)) from None
                await asyncio.sleep(SUBMIT_RETRY_PAUSE)

    async def get(self, job_id: str) -> Record:
        return dict(field(await self.call("get", {"id": job_id}), "job", dict))

    async def subscribe(
        self, kind: str, job_id: str, cb: Callable[[Msg], Any], start: int = 1
    ) -> Subscription:
        """An ordered consumer over the job's messages in the stream from sequence `start`."""
        js = self.nc.jetstream(timeout=self.timeout)
        resume = start > 1
        return await js.subscribe(
            f"{self.prefix}.{kind}.{job_id}",
            stream=self.stream(kind),
            cb=cb,
            ordered_consumer=True,
            idle_heartbeat=IDLE_HEARTBEAT,
            config=ConsumerConfig(opt_start_seq=start) if resume else None,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if resume else DeliverPolicy.ALL,
        )

    async def last_seq(self, kind: str, job_id: str) -> int | None:
        """Stream sequence of the job's newest message, None if the stream has none."""
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            msg = await js.get_last_msg(self.stream(kind), f"{self.prefix}.{kind}.{job_id}")
        except (nats.errors.Error, TimeoutError):
            return None
        return msg.seq
