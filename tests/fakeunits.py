"""An in-memory systemd for job units: a service runs as a real process, its output in its files."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from typing import Any

from schedagent.errors import ContainmentError
from schedagent.host.systemd_bus import Property, ServiceState


def as_dict(props: Sequence[Property]) -> dict[str, tuple[str, Any]]:
    return {name: (sig, value) for name, sig, value in props}


class FakeUnits:
    """systemd as far as JobUnit uses it: a service runs its ExecStartEx as a real
    process (in a session of its own) with its output appended to its files; a kill
    signals that session; the service is gone once stopped and its processes are."""

    def __init__(
        self, refuse: str | None = None, setup_status: int | None = None, bus_lost: bool = False
    ) -> None:
        self.calls: list[tuple[str, str]] = []
        self.started: dict[str, dict[str, tuple[str, Any]]] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.refuse = refuse
        self.setup_status = setup_status  # systemd's executor fails with this status
        self.bus_lost = bus_lost  # the bus goes away while the service runs
        self.job_type: str | None = None  # what systemd is doing to the agent's unit

    async def start_transient(
        self, name: str, properties: Sequence[Property], aux: Sequence[Any] = ()
    ) -> None:
        if await self.start_job(name, properties) != "done":
            raise ContainmentError(f"systemd could not start {name}: failed")

    async def pending_job_type(self, unit: str) -> str | None:
        return self.job_type

    async def start_job(
        self, name: str, properties: Sequence[Property], aux: Sequence[Any] = ()
    ) -> str:
        self.calls.append(("start", name))
        if name == self.refuse:
            raise ContainmentError(f"systemd refused StartTransientUnit: {name}")
        props = self.started[name] = as_dict(properties)
        if not name.endswith(".service"):
            return "done"
        if self.setup_status is not None:
            return "failed"
        ((path, argv, flags),) = props["ExecStartEx"][1]
        assert flags == ["no-env-expand"]
        env = dict(line.split("=", 1) for line in props["Environment"][1])
        out, err = (
            os.open(props[f"Standard{name}FileToAppend"][1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            for name in ("Output", "Error")
        )
        try:
            self.procs[name] = await asyncio.create_subprocess_exec(
                path, *argv[1:], stdout=out, stderr=err, env=env,
                cwd=props["WorkingDirectory"][1], start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(out)
            os.close(err)
        return "done"

    async def service_state(self, name: str) -> ServiceState:
        if self.setup_status is not None:
            return ServiceState(0, 1, self.setup_status, "exit-code")
        proc = self.procs[name]
        code = proc.returncode
        if code is None:
            return ServiceState(proc.pid, 0, 0, "success")
        return (
            ServiceState(0, 1, code, "success")
            if code >= 0
            else ServiceState(0, 2, -code, "signal")
        )

    async def wait_exited(self, name: str) -> ServiceState:
        if self.bus_lost:
            raise ContainmentError("the system bus is gone: EOF")
        await self.procs[name].wait()
        return await self.service_state(name)

    async def reset_failed(self, name: str) -> None:
        self.calls.append(("reset", name))

    async def reset_failed_matching(self, patterns: Sequence[str]) -> int:
        self.calls.append(("reset", " ".join(patterns)))
        return 0

    def kill_soon(self, name: str, sig: int) -> None:
        self.calls.append(("kill", f"{name} {signal.Signals(sig).name}"))
        proc = self.procs.get(name)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the fake's whole unit: the shell's session

    async def kill(self, name: str, sig: int) -> None:
        self.kill_soon(name, sig)

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        proc = self.procs.get(name)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def is_loaded(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is None:  # a slice: until it is stopped
            return name in self.started and ("stop", name) not in self.calls
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 0)
            return True  # something of its session still lives
        await proc.wait()
        return False

    async def close(self) -> None:
        pass
