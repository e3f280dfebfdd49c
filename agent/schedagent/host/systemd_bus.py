"""systemd's manager over the system bus (dbus-fast): transient units started, killed, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from dbus_fast import BusType, DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from schedagent.errors import ContainmentError

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
START_TIMEOUT = 30.0  # seconds for a transient unit's start job to finish
# A unit property as StartTransientUnit takes it: name, D-Bus signature, value.
Property = tuple[str, str, Any]


class UnitManager(Protocol):
    """What containment asks of systemd (a fake of it serves the unit tests)."""

    async def start_transient(self, name: str, properties: Sequence[Property]) -> None: ...

    def kill_soon(self, name: str, sig: int) -> None: ...

    async def kill(self, name: str, sig: int) -> None: ...

    async def stop(self, name: str) -> None: ...

    async def is_loaded(self, name: str) -> bool: ...

    async def close(self) -> None: ...


def systemd_booted(run: Path = Path("/run/systemd/system")) -> bool:
    """Whether systemd is PID 1 here (what sd_booted(3) checks)."""
    return run.is_dir()


class SystemdBus:
    """One connection to the system bus, subscribed to the manager's JobRemoved signals
    so that a transient unit's start is awaited until systemd has carried it out."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._starting: dict[str, asyncio.Future[str]] = {}  # unit name -> its job's result
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls) -> SystemdBus:
        """Connected and subscribed; ContainmentError if the bus or systemd is not there."""
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, EOFError, DBusError) as exc:
            raise ContainmentError(f"cannot reach the system bus: {exc}") from None
        manager = cls(bus)
        try:
            rule = f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'"
            await manager._call_bus("AddMatch", "s", [rule])
            await manager._call("Subscribe", "", [])
        except ContainmentError:
            bus.disconnect()
            raise
        return manager

    async def start_transient(self, name: str, properties: Sequence[Property]) -> None:
        """Start the unit and wait for its start job; ContainmentError if it failed."""
        loop = asyncio.get_running_loop()
        done = self._starting[name] = loop.create_future()
        body = [name, "fail", [(k, Variant(sig, value)) for k, sig, value in properties], []]
        try:
            await self._call("StartTransientUnit", "ssa(sv)a(sa(sv))", body)
            result = await asyncio.wait_for(done, START_TIMEOUT)
        except TimeoutError:
            raise ContainmentError(f"systemd did not start {name} in {START_TIMEOUT:g}s") from None
        finally:
            self._starting.pop(name, None)
        if result != "done":
            raise ContainmentError(f"systemd could not start {name}: {result}")

    def kill_soon(self, name: str, sig: int) -> None:
        """KillUnit without waiting for the answer (from code that cannot await); a bus
        that is gone is logged (close() kills the unit again and waits)."""
        msg = self._message("KillUnit", "ssi", [name, "all", sig], no_reply=True)
        try:
            sent = self._bus.send(msg)
        except Exception as exc:  # dbus-fast raises what its socket raised
            log.warning("cannot send KillUnit %s to systemd: %s", name, exc)
            return
        if isinstance(sent, asyncio.Future):
            sent.add_done_callback(_log_send_failure)

    async def kill(self, name: str, sig: int) -> None:
        """Signal every process of the unit; a unit already gone is no error."""
        with contextlib.suppress(UnitGone):
            await self._call("KillUnit", "ssi", [name, "all", sig])

    async def stop(self, name: str) -> None:
        with contextlib.suppress(UnitGone):
            await self._call("StopUnit", "ss", [name, "replace"])

    async def is_loaded(self, name: str) -> bool:
        """Whether systemd still has the unit (a scope whose processes are all gone is
        unloaded once it is inactive)."""
        try:
            await self._call("GetUnit", "s", [name])
        except UnitGone:
            return False
        return True

    async def close(self) -> None:
        self._bus.disconnect()

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL or msg.member != "JobRemoved":
            return
        try:
            _job_id, _path, unit, result = msg.body
        except ValueError:
            log.warning("JobRemoved signal with an unexpected body: %r", msg.body)
            return
        waiting = self._starting.get(unit)
        if waiting is not None and not waiting.done():
            waiting.set_result(result)

    async def _call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        return await self._send(self._message(member, signature, body))

    async def _call_bus(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        msg = Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body,
        )
        return await self._send(msg)

    async def _send(self, msg: Message) -> list[Any]:
        try:
            reply = await self._bus.call(msg)
        except (OSError, EOFError, DBusError) as exc:
            raise ContainmentError(f"the system bus is gone: {exc}") from None
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            if reply.error_name == NO_SUCH_UNIT:
                raise UnitGone(text)
            raise ContainmentError(f"systemd refused {msg.member}: {reply.error_name}: {text}")
        return list(reply.body)

    @staticmethod
    def _message(member: str, signature: str, body: list[Any], no_reply: bool = False) -> Message:
        return Message(
            destination=SYSTEMD,
            path=MANAGER_PATH,
            interface=MANAGER,
            member=member,
            signature=signature,
            body=body,
            flags=MessageFlag.NO_REPLY_EXPECTED if no_reply else MessageFlag.NONE,
        )


def _log_send_failure(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("a KillUnit to systemd was not sent: %s", sent.exception())


class UnitGone(ContainmentError):
    """systemd has no such unit (any more)."""


def own_unit(proc_cgroup: str) -> str | None:
    """The systemd unit this process runs in (its cgroup2 path's last part, such as
    schedagent.service), or None outside a service or scope."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            name = os.path.basename(line[3:].rstrip("/"))
            if name.endswith((".service", ".scope")):
                return name
    return None
