"""An asyncio stream server that owns every connection's task and closes each one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable

from schedagent.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Exchange = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class StreamServer:
    """Runs `exchange` once per connection on host:port (TLS with a context).

    asyncio.start_server runs each client in a task nobody awaits; here each is kept
    until it ends, so `stop` cancels and awaits the ones still talking. A client that is
    slow, oversized or gone ends its own exchange quietly: there is nothing to tell it.
    """

    def __init__(
        self,
        exchange: Exchange,
        host: str,
        port: int,
        limit: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.exchange = exchange
        self.host, self.port, self.limit, self.tls = host, port, limit, tls
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Listen (OSError if the address cannot be had); port 0 asks for a free one."""
        self._server = await asyncio.start_server(
            self._on_client, self.host, self.port, limit=self.limit, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await cancel_and_wait(*self._clients)
        await self._server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # the server runs each client in a task of its own
        self._clients.add(task)
        try:
            await self.exchange(reader, writer)
        except (TimeoutError, ConnectionError, EOFError, asyncio.LimitOverrunError):
            pass
        except ssl.SSLError as exc:
            log.info("TLS handshake failed: %s", exc)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
