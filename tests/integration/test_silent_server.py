"""A NATS server that goes silent (a host that lost power sends no FIN): the agent's
connection notices by unanswered pings within seconds, not nats-py's default minutes."""

from __future__ import annotations

import asyncio
import time

from schedagent.config import NatsConfig, OutputConfig
from schedagent.dev.procs import NatsServer
from schedagent.nats.bus import Bus


async def test_a_silent_server_is_noticed_within_seconds(nats_server: NatsServer) -> None:
    bus = Bus(NatsConfig(urls=(nats_server.url,)), OutputConfig(), "silent1")
    await bus.connect()
    try:
        assert bus.connected
        nats_server.pause()  # SIGSTOP: the socket stays open, nothing answers
        paused = time.monotonic()
        try:
            while bus.connected:
                assert time.monotonic() - paused < 30, "still 'connected' to a silent server"
                await asyncio.sleep(0.2)
        finally:
            nats_server.resume()
    finally:
        await bus.close()
