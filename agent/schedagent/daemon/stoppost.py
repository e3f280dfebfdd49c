"""`schedagent stop-post`, the unit's ExecStopPost=: the jobs kept for the next agent, or killed."""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from schedagent.daemon import handover
from schedagent.daemon.handover import Handover
from schedagent.errors import ContainmentError

if TYPE_CHECKING:
    from schedagent.host.systemd_bus import SystemdBus

log = logging.getLogger(__name__)

PREFIX = "schedagent stop-post"
EXIT_UNREACHABLE = 1


@dataclasses.dataclass(frozen=True)
class Verdict:
    keep: bool
    why: str


def decide(service_result: str | None, invocation_id: str | None, left: Handover | None) -> Verdict:
    """Whether the jobs outlive the agent that just stopped.

    Only a clean exit (systemd's $SERVICE_RESULT `success`) of the very process that
    wrote the handover ($INVOCATION_ID, which systemd gives ExecStopPost= as it gave
    the main process) leaves them running: a crash, a watchdog kill or a timeout may
    have come after a handover was written, and a handover of an earlier invocation
    was never taken up.
    """
    if service_result != "success":
        return Verdict(False, f"the agent ended with {service_result or 'no SERVICE_RESULT'}")
    if left is None:
        return Verdict(False, "no handover")
    if not invocation_id:
        return Verdict(False, "no INVOCATION_ID to match the handover with")
    if left.invocation_id != invocation_id:
        return Verdict(False, f"the handover is of another invocation ({left.invocation_id})")
    return Verdict(True, f"handed over under lease {left.lease_id:x}")


async def _connect() -> SystemdBus:
    from schedagent.host.systemd_bus import SystemdBus

    return await SystemdBus.connect()


async def stop_post(
    env: Mapping[str, str],
    path: Path = handover.DEFAULT_PATH,
    connect: Callable[[], Awaitable[SystemdBus]] = _connect,
) -> int:
    """Carry out the verdict; says what it did in one line. The exit status: 0, or
    EXIT_UNREACHABLE if the jobs could not be killed (systemd not reached)."""
    left = handover.read(path)  # one it cannot use is said and removed
    verdict = decide(env.get("SERVICE_RESULT"), env.get("INVOCATION_ID"), left)
    if verdict.keep:
        count = len(left.attempts) if left is not None else 0
        print(f"{PREFIX}: {verdict.why}: {count} job(s) left running for the next agent")
        return 0
    try:
        handover.remove(path)
    except OSError as exc:
        print(f"{PREFIX}: cannot remove the handover {path}: {exc.strerror or exc}")
    # Lazily: a stop that keeps the jobs needs neither D-Bus nor the containment code.
    from schedagent.host.jobslice import JOBS_SLICE

    try:
        bus = await connect()
        try:
            # SIGKILL first: a plain stop would wait out each job unit's SIGTERM.
            await bus.kill(JOBS_SLICE, signal.SIGKILL)
            await bus.stop(JOBS_SLICE)
        finally:
            await bus.close()
    except ContainmentError as exc:
        print(f"{PREFIX}: {verdict.why}, but cannot kill the jobs: {exc}")
        return EXIT_UNREACHABLE
    print(f"{PREFIX}: {verdict.why}: jobs killed ({JOBS_SLICE} stopped)")
    return 0
