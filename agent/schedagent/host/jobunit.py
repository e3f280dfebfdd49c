"""One attempt as transient systemd units: a slice with its limits, a service for its shell."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from schedagent.errors import ContainmentError
from schedagent.host.jobcgroup import Ending, Limits
from schedagent.host.jobslice import read_ending, slice_properties, unapplied_limits, unit_names
from schedagent.host.outputfile import OutputFile
from schedagent.host.systemd_bus import Property, ServiceState, UnitManager

log = logging.getLogger(__name__)

GONE_TIMEOUT = 10.0  # seconds a stopped service may take to go before it is left to systemd
GONE_POLL = 0.01
# Exit statuses systemd's executor gives a service it could not set up, before the
# command ran (systemd.exec(5), "Process exit codes").
SETUP_STATUSES = range(200, 244)
SETUP_FAILURES = {
    200: "its working directory is missing or not allowed",
    203: "/bin/sh cannot be executed",
    209: "its stdout file cannot be opened",
    216: "no such group",
    217: "no such user",
    222: "its stderr file cannot be opened",
}


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where an earlier agent left an attempt's output: it had handed on this much."""

    stdout_offset: int
    stderr_offset: int


def hardening(bounding_set: int) -> list[Property]:
    """The agent's own sandbox (systemd/schedagent.service), for a job unit: it is
    PID 1's child, not the agent's, so it carries the sandbox itself. The bounding set
    is the agent's own: a job keeps exactly what it had when it ran inside the agent."""
    flags = [
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateMounts",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "LockPersonality",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "RemoveIPC",
    ]
    families = ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    return [
        *((flag, "b", True) for flag in flags),
        ("CapabilityBoundingSet", "t", bounding_set),
        ("AmbientCapabilities", "t", 0),
        ("ProtectSystem", "s", "full"),
        ("ProtectHome", "s", "read-only"),
        ("RestrictNamespaces", "t", 0),  # 0: no namespace type may be made
        ("RestrictAddressFamilies", "(bas)", (True, families)),
        ("SystemCallArchitectures", "as", ["native"]),
        ("SystemCallFilter", "(bas)", (True, ["@system-service"])),
        ("SystemCallErrorNumber", "i", 1),  # EPERM: an error, not a SIGSYS kill
        ("UMask", "u", 0o027),
    ]


def service_properties(
    description: str,
    slice_name: str,
    cmd: str,
    env: Mapping[str, str],
    cwd: str,
    user: str | None,
    outputs: tuple[Path, Path],
) -> list[Property]:
    """The job's service: its shell, started by systemd in the slice, its output
    appended to files (no pipe into the agent, so it does not depend on the agent)."""
    props: list[Property] = [
        ("Description", "s", description),
        ("Slice", "s", slice_name),
        # exec: the start job waits for the exec, so a unit systemd cannot set up (no
        # such user, no working directory) fails its start and says why.
        ("Type", "s", "exec"),
        # Its end (exit code or signal) stays readable until the agent stops it.
        ("RemainAfterExit", "b", True),
        # ExecStartEx with no-env-expand: plain ExecStart has systemd expand $NAME and
        # $$ in the command before the shell sees it.
        ("ExecStartEx", "a(sasas)", [("/bin/sh", ["/bin/sh", "-c", cmd], ["no-env-expand"])]),
        ("Environment", "as", [f"{key}={value}" for key, value in env.items()]),
        ("WorkingDirectory", "s", cwd),
        ("StandardOutputFileToAppend", "s", str(outputs[0])),
        ("StandardErrorFileToAppend", "s", str(outputs[1])),
        # Only after the agent's own SIGTERM and kill_grace does anything stop the unit.
        ("SendSIGKILL", "b", True),
        ("TimeoutStopUSec", "t", 1_000_000),
    ]
    if user is not None:
        props.append(("User", "s", user))
    return props


def setup_failure(state: ServiceState) -> str | None:
    """Why systemd could not start the command, if that is what the state says."""
    if state.exit_code != 1 or state.exit_status not in SETUP_STATUSES:
        return None
    known = SETUP_FAILURES.get(state.exit_status)
    return known or f"systemd could not set it up (exit status {state.exit_status})"


class JobUnit:
    """An attempt in its own slice and service; systemd starts, limits, kills and
    accounts, and the agent follows its output files and its end."""

    gated = False

    def __init__(
        self,
        units: UnitManager,
        job_id: str,
        attempt: int,
        limits: Limits,
        output_dir: Path,
        bounding_set: int,
    ) -> None:
        self.units = units
        self.limits = limits
        self.bounding_set = bounding_set
        self.pid: int | None = None
        self.slice, self.service = unit_names(job_id, attempt)
        self.description = f"schedagent job {job_id} attempt {attempt}"
        base = output_dir / f"{job_id}-{attempt}"
        self.outputs = [OutputFile("stdout", base.with_suffix(".out"))]
        self.outputs.append(OutputFile("stderr", base.with_suffix(".err")))
        self._slice_up = self._service_up = False

    async def start(self, cmd: str, env: Mapping[str, str], cwd: str, user: str | None) -> None:
        """The slice with its limits, then the service; ContainmentError (saying why)
        if nothing of the command ran."""
        props = slice_properties(self.description, self.limits)
        try:
            await self.units.start_transient(self.slice, props)
            self._slice_up = True
            unapplied = await asyncio.to_thread(unapplied_limits, self.slice, self.limits)
        except ContainmentError as exc:
            raise ContainmentError(f"cannot place it in its cgroup: {exc}") from None
        if unapplied:
            # systemd accepts MemoryMax= even where it cannot write the controller (an
            # nspawn host whose v1 hierarchies are read-only): never run unlimited.
            raise ContainmentError(
                f"cannot place it in its cgroup: cannot enforce {unapplied} "
                "(systemd did not apply it) here"
            )
        for output in self.outputs:
            output.remove()  # a leftover of an earlier agent's attempt: not this one's
        paths = (self.outputs[0].path, self.outputs[1].path)
        props = service_properties(self.description, self.slice, cmd, env, cwd, user, paths)
        props += hardening(self.bounding_set)
        self._service_up = True  # from here on, whatever systemd made must be stopped
        result = await self.units.start_job(self.service, props)
        state = await self.units.service_state(self.service)
        why = setup_failure(state) if result != "done" else None
        if why is not None:
            raise ContainmentError(why)
        self.pid = state.main_pid or None

    async def attach(self, resume: Resume) -> None:
        """Take over the units an earlier agent started, its output from where that
        agent left it; ContainmentError if the service is gone."""
        self._slice_up = await self.units.is_loaded(self.slice)
        if not await self.units.is_loaded(self.service):
            raise ContainmentError(f"{self.service} is gone")
        self._service_up = True
        self.outputs[0].offset, self.outputs[1].offset = resume.stdout_offset, resume.stderr_offset
        self.pid = (await self.units.service_state(self.service)).main_pid or None

    def resume_point(self) -> Resume:
        """How much of its output has been handed on: where the next agent goes on."""
        return Resume(self.outputs[0].offset, self.outputs[1].offset)

    async def wait_exited(self) -> ServiceState:
        return await self.units.wait_exited(self.service)

    def signal(self, sig: signal.Signals) -> None:
        """sig to every process of the service, escaped sessions and daemons too."""
        if self._service_up:
            self.units.kill_soon(self.service, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def close(self) -> Ending:
        """Kill what is left, let the service go, read the slice's accounting, stop the
        slice, remove the output files (their content has been handed on)."""
        try:
            if self._service_up:
                await self._stop_service()
            if not self._slice_up:
                return Ending({})
            return await asyncio.to_thread(read_ending, self.slice)
        finally:
            if self._slice_up:
                await self.units.stop(self.slice)
            if self._service_up:
                for output in self.outputs:
                    output.remove()

    async def _stop_service(self) -> None:
        # A daemon left by a command that exited 0 lives on in its active/exited unit;
        # a failed unit stays loaded until it is reset.
        await self.units.kill(self.service, signal.SIGKILL)
        await self.units.stop(self.service)
        deadline = time.monotonic() + GONE_TIMEOUT
        while await self.units.is_loaded(self.service):
            await self.units.reset_failed(self.service)
            if time.monotonic() > deadline:
                log.warning("%s still there %gs after its stop", self.service, GONE_TIMEOUT)
                return
            await asyncio.sleep(GONE_POLL)


def bounding_set(status: Path = Path("/proc/self/status")) -> int:
    """This process's capability bounding set (CapBnd), for its jobs' units."""
    with contextlib.suppress(OSError, ValueError):
        for line in status.read_text().splitlines():
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0
