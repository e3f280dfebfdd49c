"""systemd on the system bus, faked at dbus-fast's MessageBus: what SystemdBus sends, answered."""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import Message, Variant

from schedagent.host.systemd_bus import unit_path

NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"


class SystemdFake:
    """Answers GetUnit for the units in `loaded`, Properties.Get from `properties`,
    KillUnit/StopUnit (NoSuchUnit for a unit not loaded) and StartTransientUnit (then
    systemd's JobRemoved `done`, the unit loaded); `refuse` maps a member to the error
    every call of it gets. Every message sent is kept, its body checked against its
    signature as the real bus would."""

    def __init__(self, loaded: set[str] | None = None) -> None:
        self.loaded = set(loaded or ())
        self.properties: dict[tuple[str, str, str], Variant] = {}
        self.refuse: dict[str, str] = {}
        self.sent: list[Message] = []
        self.handlers: list[Any] = []

    @staticmethod
    def unit_path(unit: str) -> str:
        return unit_path(unit)  # as systemd escapes it

    def calls(self, member: str | None = None) -> list[tuple[str, list[Any]]]:
        """(member, body) of each call sent (of one member only, if given)."""
        return [(m.member, m.body) for m in self.sent if member in (None, m.member)]

    def add_message_handler(self, handler: Any) -> None:
        self.handlers.append(handler)

    def send(self, msg: Message) -> None:
        msg.serial = msg.serial or len(self.sent) + 1
        msg._marshall(False)
        self.sent.append(msg)

    def disconnect(self) -> None:
        pass

    async def call(self, msg: Message) -> Message:
        self.send(msg)
        if msg.member in self.refuse:
            return Message.new_error(msg, self.refuse[msg.member], "refused")
        reply = self._answer(msg)
        reply._marshall(False)
        return reply

    def _answer(self, msg: Message) -> Message:
        first = msg.body[0] if msg.body else None
        if msg.member == "GetUnit":
            if first not in self.loaded:
                return Message.new_error(msg, NO_SUCH_UNIT, f"Unit {first} not loaded.")
            return Message.new_method_return(msg, "o", [self.unit_path(first)])
        if msg.member in ("KillUnit", "StopUnit") and first not in self.loaded:
            return Message.new_error(msg, NO_SUCH_UNIT, f"Unit {first} not loaded.")
        if msg.member == "Get":
            value = self.properties.get((msg.path, *msg.body))
            if value is None:
                return Message.new_error(msg, UNKNOWN_OBJECT, f"Unknown object '{msg.path}'.")
            return Message.new_method_return(msg, "v", [value])
        if msg.member == "StartTransientUnit":
            self.loaded.add(first)
            self._signal_done(first)
            return Message.new_method_return(msg, "o", ["/org/freedesktop/systemd1/job/7"])
        if msg.member in ("KillUnit", "AddMatch", "Subscribe"):
            return Message.new_method_return(msg)
        if msg.member == "StopUnit":
            return Message.new_method_return(msg, "o", ["/org/freedesktop/systemd1/job/8"])
        raise AssertionError(f"the fake does not know {msg.member}")

    def _signal_done(self, unit: str) -> None:
        signal_msg = Message.new_signal(
            "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "JobRemoved",
            "uoss", [7, "/org/freedesktop/systemd1/job/7", unit, "done"],
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        for handler in self.handlers:
            loop.call_soon(handler, signal_msg)
