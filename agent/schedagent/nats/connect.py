"""The one place that opens a NATS connection, for the agent and for schedctl alike."""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats

# A server whose host lost power sends no FIN: only unanswered pings reveal it. nats-py
# pings every 120 s and gives up after 2, so a client would stay deaf for minutes;
# this notices in about 10 s and moves to another server.
PING_INTERVAL = 3.0
MAX_OUTSTANDING_PINGS = 3

ErrorCallback = Callable[[Exception], Awaitable[None]]
Callback = Callable[[], Awaitable[None]]


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


async def connect(
    servers: Sequence[str],
    *,
    name: str,
    tls: ssl.SSLContext | None,
    connect_timeout: float,
    reconnect_time_wait: float,
    error_cb: ErrorCallback,
    disconnected_cb: Callback,
    reconnected_cb: Callback,
    closed_cb: Callback | None = None,
    drain_timeout: float = 30.0,
) -> Any:
    """Connect once, failing fast so the caller can say why; then see keep_reconnecting.

    nats-py retries a failed first connect forever unless attempts are capped, and logs
    tracebacks unless every callback is the caller's.
    """
    return await nats.connect(
        servers=list(servers),
        name=name,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=reconnect_time_wait,
        connect_timeout=max(1, math.ceil(connect_timeout)),
        ping_interval=PING_INTERVAL,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        drain_timeout=drain_timeout,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        closed_cb=closed_cb,
        tls=tls,
    )


def keep_reconnecting(nc: Any, attempts: int = -1, wait: float | None = None) -> None:
    """From now on, reconnect after a lost link (`attempts` times, -1: forever).

    nats-py has one switch for the first connect and later reconnects; it reads these
    options on each attempt, so flipping them after the first connect is enough.
    """
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = attempts
    if wait is not None:
        nc.options["reconnect_time_wait"] = wait
