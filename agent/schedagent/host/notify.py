"""sd_notify(3) for the agent: datagrams to $NOTIFY_SOCKET, and the watchdog interval."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends state lines to systemd; without NOTIFY_SOCKET every call does nothing.

    Sends never block: a ping that cannot be sent now is worth nothing later, and
    the event loop must not wait on systemd.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        # sd_watchdog_enabled(3): ping at half the timeout systemd gave us.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._failing = False
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Take NOTIFY_SOCKET and WATCHDOG_* out of the environment (as sd_notify's
        unset_environment does), so that no child process ever sees them."""
        env = os.environ if environ is None else environ
        address, usec, pid = (env.pop(name, None) for name in NOTIFY_ENV)
        watchdog = _watchdog_usec(usec, pid)
        return cls(address or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """One datagram of `KEY=value` lines; False (logged once) if it was not sent."""
        if self._sock is None or self.address is None:
            return False
        # A leading '@' names a socket in the abstract namespace.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto("\n".join(lines).encode(), target)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd tell this reload from an earlier one (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    """WATCHDOG_USEC if it is meant for this process (WATCHDOG_PID absent or ours)."""
    try:
        value = int(usec) if usec else 0
        meant_for = int(pid) if pid else os.getpid()
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec, pid)
        return None
    if value <= 0 or meant_for != os.getpid():
        return None
    return value
