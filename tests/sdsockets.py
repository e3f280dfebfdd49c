"""Test stand-ins for systemd's sockets: a real AF_UNIX datagram socket, read in a thread."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Received(Generic[T]):
    """One datagram: when it arrived (time.monotonic) and what it said."""

    def __init__(self, at: float, body: T) -> None:
        self.at = at
        self.body = body


class DatagramListener(Generic[T]):
    """Binds `address` ('@name' is abstract) and keeps every datagram, parsed."""

    def __init__(self, address: str, parse: Callable[[bytes], T]) -> None:
        self.address = address
        self.parse = parse
        self.received: list[Received[T]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            with self._lock:
                self.received.append(Received(time.monotonic(), self.parse(data)))

    def messages(self) -> list[Received[T]]:
        with self._lock:
            return list(self.received)

    def wait_for(
        self, match: Callable[[T], bool], timeout: float, what: str, after: float = 0.0
    ) -> Received[T]:
        """The first message since `after` (monotonic) that matches, within timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.messages():
                if item.at >= after and match(item.body):
                    return item
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)

    def wait_for_silence(
        self, match: Callable[[T], bool], quiet: float, timeout: float, what: str
    ) -> float:
        """Wait until no matching message came for `quiet` s; returns when silence began."""
        deadline = time.monotonic() + timeout
        while True:
            last = max((m.at for m in self.messages() if match(m.body)), default=0.0)
            now = time.monotonic()
            if now - last >= quiet:
                return last
            if now > deadline:
                raise AssertionError(f"{what}: still arriving after {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def parse_notify(data: bytes) -> dict[str, str]:
    """sd_notify: newline-separated KEY=value assignments."""
    pairs = (line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def parse_journal(data: bytes) -> dict[str, bytes]:
    """journald's native protocol, written from its spec (not from the agent's encoder)."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            fields[key.decode()] = value
            pos = end + 1
            continue
        # KEY\n, a little-endian 64-bit size, the value, \n
        (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
        value = data[end + 9 : end + 9 + size]
        if data[end + 9 + size : end + 10 + size] != b"\n":
            raise ValueError(f"binary field {line!r} not followed by a newline")
        fields[line.decode()] = value
        pos = end + 10 + size
    return fields
