"""The console's lifetime: one NATS connection, the HTTP server, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys

import click

from schedagent.core.signing import SigningKey
from schedagent.ctl.client import Client
from schedagent.ctl.command import Settings
from schedagent.ctl.ui.console import NatsCluster
from schedagent.ctl.ui.http import HttpServer
from schedagent.ctl.ui.server import Console
from schedagent.nats.connect import keep_reconnecting

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(host: str, tls: bool) -> frozenset[str]:
    """The host names a loopback console answers to (with its port); behind TLS a rebound
    name fails the certificate check instead, and the operator's DNS name is unknown here."""
    if tls:
        return frozenset()
    return frozenset({host if ":" not in host else f"[{host}]", *LOOPBACK_NAMES})


async def serve(
    settings: Settings,
    key: SigningKey | None,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
) -> None:
    client = Client(settings.url, settings.prefix, settings.timeout, settings.ca_file)
    await client.connect()
    # A console stays up across NATS restarts: reconnect for as long as it runs.
    keep_reconnecting(client.nc, wait=1.0)
    console = Console(
        NatsCluster(client, key), allowed_hosts(host, context is not None), client.shown_url
    )
    server = HttpServer(console, host, port, context)
    try:
        await server.start()
        click.echo(f"schedctl ui on {server.url}")
        sys.stdout.flush()
        await _until_signalled()
    finally:
        await server.stop()
        await client.close()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(signum)
