"""schedctl's NATS side: connect, call API verbs, and follow a job's events and output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from schedagent.core.model import FINAL_STATES
from schedagent.nats.bus import MAX_OUTSTANDING_PINGS, PING_INTERVAL, tls_context, without_secrets

EXIT_ERROR = 1
EXIT_NO_CLUSTER = 3
EXIT_NOT_FOUND = 4

# A timed-out submit may still have been applied; the idempotency key makes resending safe.
SUBMIT_RETRY_WINDOW = 10.0
SUBMIT_RETRY_PAUSE = 0.5
# Events are only a hint; this poll is what guarantees a follower ends.
POLL_INTERVAL = 3.0
# The worker may finish the record a moment before its last chunks land in the stream.
EOF_GRACE = 3.0
# nats-py rebuilds an ordered consumer that missed two heartbeats; keep that short.
IDLE_HEARTBEAT = 2.0
# `logs` gives up on a stream that goes quiet before the last chunk it expected.
CATCH_UP_IDLE = 5.0

Record = dict[str, Any]
ChunkWriter = Callable[[str, str], None]


class CtlError(Exception):
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
        reply = json.loads(raw)
    except ValueError:
        raise CtlError("malformed reply from agent: not JSON") from None
    if not isinstance(reply, dict):
        raise CtlError("malformed reply from agent: not a JSON object")
    if reply.get("ok") is not True:
        error = reply.get("error") or "request failed"
        raise ApiError(str(error), str(reply.get("code") or "internal"))
    return reply


def _reason(exc: BaseException) -> str:
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
            # nats-py retries a failed first connect forever unless attempts are capped,
            # and logs tracebacks unless every callback is ours.
            self._nc = await nats.connect(
                servers=self.url.split(","),
                connect_timeout=max(1, math.ceil(self.timeout)),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                # `--wait` may follow a job for hours: notice a vanished server soon.
                ping_interval=PING_INTERVAL,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                error_cb=remember,
                disconnected_cb=ignore,
                reconnected_cb=reconnected,
                closed_cb=ignore,
                tls=tls,
            )
        except Exception as exc:
            reason = _reason(errors[-1] if errors else exc)
            raise CtlError(
                f"cannot connect to NATS at {self.shown_url}: {reason}", EXIT_NO_CLUSTER
            ) from None

    def keep_reconnecting(self) -> None:
        """Let a long follow survive a NATS restart; the first connect still fails fast."""
        # nats-py has one switch for the first connect and later reconnects; flip it now.
        self.nc.options["allow_reconnect"] = True
        self.nc.options["max_reconnect_attempts"] = 120
        self.nc.options["reconnect_time_wait"] = 1.0

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
        payload = json.dumps({"v": 1, **(body or {})}).encode()
        try:
            msg = await self.nc.request(f"{self.prefix}.api.{verb}", payload, timeout=self.timeout)
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise NoAgentError(self.shown_url, self.timeout) from None
        except nats.errors.Error as exc:
            raise CtlError(
                f"request to {self.shown_url} failed: {_reason(exc)}", EXIT_NO_CLUSTER
            ) from None
        return _parse_reply(msg.data)

    async def submit(self, spec: Record) -> Record:
        """Submit, resending with the same idempotency key while no agent answers."""
        started = time.monotonic()
        while True:
            try:
                return await self.call("submit", {"spec": spec})
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
            body = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(body, dict) or body.get("job") != self.job_id:
            return
        if body.get("eof"):
            self.eofs.add(int(body.get("attempt") or 0))
        elif isinstance(body.get("data"), str):
            self.write(str(body.get("stream")), body["data"])

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
        raise CtlError(f"cannot read the output stream: {_reason(exc)}") from None
    finally:
        await _unsubscribe(sub)
    return True


class JobFollower:
    """Streams a job's output as it comes and returns the job's final record."""

    def __init__(self, client: Client, job_id: str, write: ChunkWriter) -> None:
        self.client = client
        self.job_id = job_id
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
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(msg.data).get("state") in FINAL_STATES:
                self._wake.set()

    async def _until_final(self) -> Record:
        while True:
            # Cleared before asking so an event that lands during the request is not lost.
            self._wake.clear()
            await self._resubscribe_if_reconnected()
            record = await self._try_get()
            if record is not None and is_final(record):
                return record
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)

    async def _try_get(self) -> Record | None:
        try:
            return await self.client.get(self.job_id)
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


def job_exit_code(record: Record) -> int:
    """The exit status `submit --wait` mirrors for a final job."""
    state = record.get("state")
    if state == "SUCCEEDED":
        return 0
    if state == "TIMED_OUT":
        return 124
    if state == "CANCELED":
        return 130
    attempts = record.get("attempts") or []
    last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
    code = last.get("exit_code")
    if code is None:
        code = record.get("exit_code")
    signal = last.get("signal")
    if isinstance(code, int) and 0 < code < 256:
        return code
    if isinstance(code, int) and -128 < code < 0:
        return 128 - code
    if isinstance(signal, int) and 0 < signal < 128:
        return 128 + signal
    return 1
