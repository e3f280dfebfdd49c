"""This node's pull consumer of dispatches, made again whenever it goes missing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
import nats.js.api as jsapi
import nats.js.errors

from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

FETCH_BATCH = 16
FETCH_TIMEOUT = 2.0
ACK_WAIT = 30.0
# How often an idle worker asks whether its consumer still exists: a fetch from a
# deleted consumer (NATS restarted without its storage) only ever times out.
CHECK_INTERVAL = 5.0
RETRY_DELAY = 1.0


class DispatchConsumer:
    """Fetches this node's dispatches; after a reconnect and every CHECK_INTERVAL it
    checks the durable consumer (and its stream) still exist and makes them again."""

    def __init__(self, bus: Bus, node: str) -> None:
        self.bus = bus
        self.durable = f"node-{node}"
        self.subject = bus.subjects.dispatch(node)
        self._sub: Any = None
        self._checked_at = 0.0
        self._reconnects = bus.reconnects

    async def fetch(self) -> list[Any]:
        """Up to FETCH_BATCH messages; none after a timeout or a failure (logged)."""
        try:
            if self._sub is None or self._check_due():
                await self._ensure()
            return list(await self._sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            log.warning("fetching dispatches failed: %s", exc)
            await asyncio.sleep(RETRY_DELAY)
            return []

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def _check_due(self) -> bool:
        reconnected = self.bus.reconnects != self._reconnects
        return reconnected or time.monotonic() - self._checked_at > CHECK_INTERVAL

    async def _ensure(self) -> None:
        self._reconnects = self.bus.reconnects
        self._checked_at = time.monotonic()
        stream = self.bus.subjects.dispatch_stream
        if self._sub is not None:
            try:
                await self.bus.js.consumer_info(stream, self.durable)
                return
            except nats.js.errors.NotFoundError as exc:
                log.warning("dispatch consumer %s is gone (%s); making it again", self.durable, exc)
                await self.close()
        try:
            self._sub = await self._subscribe()
        except nats.js.errors.NotFoundError:
            log.warning("stream %s is gone; making the streams again", stream)
            await self.bus.ensure_streams()
            self._sub = await self._subscribe()

    async def _subscribe(self) -> Any:
        return await self.bus.js.pull_subscribe(
            self.subject,
            durable=self.durable,
            stream=self.bus.subjects.dispatch_stream,
            config=jsapi.ConsumerConfig(ack_wait=ACK_WAIT, max_ack_pending=1000),
        )
