"""GET /metrics over HTTP/1.x, served on the agent's event loop (asyncio.start_server).

On the loop, not in prometheus-client's own server thread: the figures read at scrape
time (running jobs, the leader's view) are the loop's data structures, which another
thread could see half-changed (a dict resized under its iteration). A scrape costs the
loop a millisecond or so every scrape interval; slow or silent clients cost it nothing
(each connection is bounded in time and size). A peer outside metrics.allow (when set)
gets 403 and no figure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schedagent.configvalues import IPNetwork
from schedagent.errors import ListenError
from schedagent.streamserver import StreamServer

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
MAX_HEAD = 8192
# Refused peers logged once each, at most this many: a scanner cannot flood the log.
MAX_LOGGED_REFUSALS = 100


class MetricsServer(StreamServer):
    def __init__(
        self, registry: CollectorRegistry, host: str, port: int, allow: Sequence[IPNetwork] = ()
    ) -> None:
        """allow: the peers that may scrape; empty, any that can connect."""
        super().__init__(self._timed_answer, host, port, limit=MAX_HEAD)
        self.registry = registry
        self.allow = tuple(allow)
        self._refused: set[str] = set()

    async def start(self) -> None:
        try:
            await super().start()
        except OSError as exc:
            # asyncio words it "error while attempting to bind on address ...": the
            # errno's own text is the line an operator needs.
            problem = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"metrics.listen {self.address}: cannot listen: {problem}") from exc
        log.info("metrics on http://%s/metrics", self.address)

    async def _timed_answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await asyncio.wait_for(self._answer(reader, writer), REQUEST_TIMEOUT)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if not self._allowed(writer.get_extra_info("peername")):
            status, body, kind = "403 Forbidden", b"", "text/plain"
        elif method not in (b"GET", b"HEAD"):
            status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
        elif path != b"/metrics":
            status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
        else:
            status, body, kind = "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        if method != b"HEAD":
            writer.write(body)
        await writer.drain()

    def _allowed(self, peer: object) -> bool:
        """Whether the connection's source address is in metrics.allow (or it is empty)."""
        if not self.allow:
            return True
        host = peer[0] if isinstance(peer, tuple) and peer else None
        try:
            address = ipaddress.ip_address(str(host).split("%", 1)[0])
        except ValueError:
            address = None  # not an IP peer (a Unix socket): not on any list
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client of a dual-stack [::] listen
        if address is not None and any(address in network for network in self.allow):
            return True
        if len(self._refused) < MAX_LOGGED_REFUSALS and str(host) not in self._refused:
            self._refused.add(str(host))
            log.warning("metrics: refused a scrape from %s: not in metrics.allow", host)
        return False
