"""A TCP relay on loopback that a test can freeze: one agent's link to etcd or NATS, cut.

Frozen, it is a black hole, as a network partition is: connections stay open and new
ones are accepted, but no byte passes either way, so the agent's client sees silence
(timeouts, unanswered pings), not a refusal. Thawed, the bytes held back flow again.
The relay runs its own event loop in a thread, so it keeps relaying while the test
blocks (starting a cluster, waiting on a process).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from schedagent.dev.procs import HOST, free_port

CHUNK = 65536


class Relay:
    """Relays 127.0.0.1:port to target_port; freeze() and thaw() are thread-safe."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay-{self.port}", daemon=True)
        self._stopped: asyncio.Future[None] | None = None

    def url(self, scheme: str) -> str:
        return f"{scheme}://{HOST}:{self.port}"

    def start(self) -> Relay:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"relay on port {self.port} did not start")
        return self

    def freeze(self) -> None:
        self._loop.call_soon_threadsafe(self._open.clear)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)

    def close(self) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set_result, None)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._open.set()
        self._stopped = self._loop.create_future()
        tasks: set[asyncio.Task[None]] = set()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._relay(reader, writer)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(accepted, HOST, self.port)
        self._started.set()
        await self._stopped
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._open.wait()  # a connection made while frozen is held, not refused
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self._open.wait()
                data = await src.read(CHUNK)
                if not data:
                    break
                await self._open.wait()  # frozen meanwhile: hold what was read
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.close()
