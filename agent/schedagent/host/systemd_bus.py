"""systemd's manager over the system bus (dbus-fast): transient units started, killed, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT_PATHS = "/org/freedesktop/systemd1/unit"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT = "org.freedesktop.systemd1.Unit"
JOB = "org.freedesktop.systemd1.Job"
# A job's object is gone once systemd has finished it.
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
START_TIMEOUT = 30.0  # seconds for a transient unit's start job to finish
# A service's state is read again this often even without a PropertiesChanged signal
# (one lost on the bus must not leave a job "running" forever).
REREAD_INTERVAL = 5.0
# A unit property as StartTransientUnit takes it: name, D-Bus signature, value.
Property = tuple[str, str, Any]


@dataclasses.dataclass(frozen=True)
class ServiceState:
    """A service's main process as systemd last saw it."""

    main_pid: int  # 0 once it has exited
    exit_code: int  # ExecMainCode: 0 running (or never ran), 1 exited, 2 killed, 3 dumped
    exit_status: int  # ExecMainStatus: the exit status, or the signal that killed it
    result: str  # Result: success, exit-code, signal, oom-kill, ... (not the exit itself)

    @property
    def exited(self) -> bool:
        return self.exit_code != 0


class UnitManager(Protocol):
    """What containment asks of systemd (a fake of it serves the unit tests)."""

    async def start_transient(
        self,
        name: str,
        properties: Sequence[Property],
        aux: Sequence[tuple[str, Sequence[Property]]] = (),
    ) -> None: ...

    async def start_job(
        self,
        name: str,
        properties: Sequence[Property],
        aux: Sequence[tuple[str, Sequence[Property]]] = (),
    ) -> str: ...

    async def pending_job_type(self, unit: str) -> str | None: ...

    async def service_state(self, name: str) -> ServiceState: ...

    async def wait_exited(self, name: str) -> ServiceState: ...

    async def reset_failed(self, name: str) -> None: ...

    async def reset_failed_matching(self, patterns: Sequence[str]) -> int: ...

    def kill_soon(self, name: str, sig: int) -> None: ...

    async def kill(self, name: str, sig: int) -> None: ...

    async def stop(self, name: str) -> None: ...

    async def is_loaded(self, name: str) -> bool: ...

    async def close(self) -> None: ...


class JobTypes(Protocol):
    """What the agent asks systemd at SIGTERM: is it being restarted or stopped."""

    async def pending_job_type(self, unit: str) -> str | None: ...


def is_restart(job_type: str | None) -> bool:
    """Whether the job systemd carries out on the agent's unit starts it again:
    `systemctl restart` and `try-restart` (and deb-systemd-invoke's, the postinst's on
    an upgrade) read as `restart` on an active unit; `try-restart` is counted as well in
    case a systemd reports it as such. A stop, or no job at all (a signal sent by hand),
    is not."""
    return job_type in ("restart", "try-restart")


def systemd_booted(run: Path = Path("/run/systemd/system")) -> bool:
    """Whether systemd is PID 1 here (what sd_booted(3) checks)."""
    return run.is_dir()


class SystemdBus:
    """One connection to the system bus, subscribed to the manager's JobRemoved signals
    so that a transient unit's start is awaited until systemd has carried it out."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._starting: dict[str, asyncio.Future[str]] = {}  # unit name -> its job's result
        self._watching: dict[str, asyncio.Event] = {}  # unit object path -> set on a change
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
            # One rule for every unit's changes rather than one per job unit: two bus
            # round trips less per attempt; the few other units' changes are dropped.
            rule = (
                f"type='signal',sender='{SYSTEMD}',interface='{PROPERTIES}',"
                f"member='PropertiesChanged',path_namespace='{UNIT_PATHS}'"
            )
            await manager._call_bus("AddMatch", "s", [rule])
            await manager._call("Subscribe", "", [])
        except ContainmentError:
            bus.disconnect()
            raise
        return manager

    async def start_transient(
        self,
        name: str,
        properties: Sequence[Property],
        aux: Sequence[tuple[str, Sequence[Property]]] = (),
    ) -> None:
        """Start the unit and wait for its start job; ContainmentError if it failed."""
        result = await self.start_job(name, properties, aux)
        if result != "done":
            raise ContainmentError(f"systemd could not start {name}: {result}")

    async def start_job(
        self,
        name: str,
        properties: Sequence[Property],
        aux: Sequence[tuple[str, Sequence[Property]]] = (),
    ) -> str:
        """Start the unit; its start job's result (done, failed, ...) once systemd has
        carried it out. ContainmentError if systemd refused it or took too long.

        `aux`: units made with it, by name and properties (a timer's service), which
        systemd loads but does not start."""
        loop = asyncio.get_running_loop()
        done = self._starting[name] = loop.create_future()
        body = [
            name,
            "fail",
            _variants(properties),
            [(aux_name, _variants(aux_properties)) for aux_name, aux_properties in aux],
        ]
        try:
            await self._call("StartTransientUnit", "ssa(sv)a(sa(sv))", body)
            return await asyncio.wait_for(done, START_TIMEOUT)
        except TimeoutError:
            raise ContainmentError(f"systemd did not start {name} in {START_TIMEOUT:g}s") from None
        finally:
            self._starting.pop(name, None)

    async def service_state(self, name: str) -> ServiceState:
        """The service's main process as systemd has it now."""
        msg = Message(
            destination=SYSTEMD,
            path=unit_path(name),
            interface=PROPERTIES,
            member="GetAll",
            signature="s",
            body=[SERVICE],
        )
        (props,) = await self._send(msg)
        return ServiceState(
            main_pid=int(props["MainPID"].value),
            exit_code=int(props["ExecMainCode"].value),
            exit_status=int(props["ExecMainStatus"].value),
            result=str(props["Result"].value),
        )

    async def wait_exited(self, name: str) -> ServiceState:
        """The service's state once its main process has exited: read again on each
        change systemd signals for it (and every REREAD_INTERVAL, whatever comes)."""
        path = unit_path(name)
        changed = self._watching[path] = asyncio.Event()
        try:
            while not (state := await self.service_state(name)).exited:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), REREAD_INTERVAL)
                changed.clear()
            return state
        finally:
            self._watching.pop(path, None)

    async def reset_failed(self, name: str) -> None:
        """Unload a failed unit (a failed transient unit stays until this)."""
        with contextlib.suppress(UnitGone):
            await self._call("ResetFailedUnit", "s", [name])

    async def reset_failed_matching(self, patterns: Sequence[str]) -> int:
        """Reset every failed unit whose name matches one of the glob patterns; how many."""
        (units,) = await self._call("ListUnitsByPatterns", "asas", [["failed"], list(patterns)])
        for unit in units:
            await self.reset_failed(unit[0])
        return len(units)

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
        """Whether systemd still has the unit (a transient unit is unloaded once it is
        inactive; a failed one only once it is reset)."""
        try:
            await self._call("GetUnit", "s", [name])
        except UnitGone:
            return False
        return True

    async def pending_job_type(self, unit: str) -> str | None:
        """The type of the job systemd is carrying out on the unit (`restart`, `stop`,
        ...; is_restart reads it), None if none (or the unit is not loaded)."""
        try:
            [unit_path] = await self._call("GetUnit", "s", [unit])
            job_id, job_path = await self._get(unit_path, UNIT, "Job")  # (uo)
            if job_id == 0:
                return None
            return str(await self._get(job_path, JOB, "JobType"))
        except UnitGone:
            return None

    async def close(self) -> None:
        self._bus.disconnect()

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.member == "PropertiesChanged":
            changed = self._watching.get(msg.path or "")
            if changed is not None:
                changed.set()
            return
        if msg.member != "JobRemoved":
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

    async def _get(self, path: str, interface: str, name: str) -> Any:
        """One property of a systemd object (a unit's, a job's): its value, unwrapped."""
        msg = Message(
            destination=SYSTEMD,
            path=path,
            interface=PROPERTIES,
            member="Get",
            signature="ss",
            body=[interface, name],
        )
        [value] = await self._send(msg, gone=(NO_SUCH_UNIT, UNKNOWN_OBJECT))
        return value.value

    async def _send(self, msg: Message, gone: Sequence[str] = (NO_SUCH_UNIT,)) -> list[Any]:
        try:
            reply = await self._bus.call(msg)
        except (OSError, EOFError, DBusError) as exc:
            raise ContainmentError(f"the system bus is gone: {exc}") from None
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            if reply.error_name in gone:
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


def _variants(properties: Sequence[Property]) -> list[tuple[str, Variant]]:
    return [(k, Variant(sig, value)) for k, sig, value in properties]


def _log_send_failure(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("a KillUnit to systemd was not sent: %s", sent.exception())


def unit_path(name: str) -> str:
    """The unit's D-Bus object path: systemd escapes every byte of its name that is not
    an ASCII letter or digit (and a leading digit) as _xx."""
    escaped = "".join(
        chr(b)
        if chr(b).isalnum() and b < 128 and not (i == 0 and chr(b).isdigit())
        else f"_{b:02x}"
        for i, b in enumerate(name.encode())
    )
    return f"{UNIT_PATHS}/{escaped}"


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
