"""`schedagent stop-post`: the jobs kept only after a clean handover of this invocation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dbusfake import SystemdFake
from schedagent.daemon import handover
from schedagent.daemon.handover import HandedAttempt, Handover
from schedagent.daemon.stoppost import EXIT_UNREACHABLE, decide, stop_post
from schedagent.errors import ContainmentError
from schedagent.host.systemd_bus import SystemdBus

INVOCATION = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
LEFT = Handover(
    INVOCATION,
    0xABC,
    10,
    5.0,
    (HandedAttempt("0123456789abcdef0123", 1, "schedjob-0123456789abcdef0123-1.service", 3, 0),),
)
SLICE = "schedagent-jobs.slice"


@pytest.mark.parametrize(
    ("result", "invocation", "left", "keep", "why"),
    [
        ("success", INVOCATION, LEFT, True, "handed over under lease abc"),
        # A crash, a watchdog kill, a stop timeout: even after the handover was written.
        ("signal", INVOCATION, LEFT, False, "the agent ended with signal"),
        ("watchdog", INVOCATION, LEFT, False, "the agent ended with watchdog"),
        ("timeout", INVOCATION, LEFT, False, "the agent ended with timeout"),
        ("exit-code", INVOCATION, None, False, "the agent ended with exit-code"),
        (None, INVOCATION, LEFT, False, "the agent ended with no SERVICE_RESULT"),
        ("", INVOCATION, LEFT, False, "the agent ended with no SERVICE_RESULT"),
        # A clean stop that drained: nothing handed over.
        ("success", INVOCATION, None, False, "no handover"),
        # Left by an earlier invocation that never got to its successor.
        ("success", "f" * 32, LEFT, False, f"the handover is of another invocation ({INVOCATION})"),
        ("success", None, LEFT, False, "no INVOCATION_ID to match the handover with"),
        ("success", "", LEFT, False, "no INVOCATION_ID to match the handover with"),
    ],
)  # fmt: skip
def test_the_jobs_are_kept_only_after_this_invocations_clean_handover(
    result: str | None, invocation: str | None, left: Handover | None, keep: bool, why: str
) -> None:
    verdict = decide(result, invocation, left)
    assert (verdict.keep, verdict.why) == (keep, why)


def env(result: str, invocation: str = INVOCATION) -> dict[str, str]:
    return {"SERVICE_RESULT": result, "INVOCATION_ID": invocation}


class Connections:
    """SystemdBus.connect, over a fake systemd: how often it was asked, or refused."""

    def __init__(self, fake: SystemdFake | None = None, refused: str | None = None) -> None:
        self.fake = fake or SystemdFake()
        self.refused = refused
        self.count = 0

    async def __call__(self) -> SystemdBus:
        self.count += 1
        if self.refused is not None:
            raise ContainmentError(self.refused)
        return SystemdBus(self.fake)  # type: ignore[arg-type]


async def test_a_clean_handover_leaves_the_jobs_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "handover.json"
    handover.write(path, LEFT)
    connect = Connections()
    assert await stop_post(env("success"), path, connect) == 0
    assert handover.read(path) == LEFT  # for the next agent
    assert connect.count == 0  # systemd not even asked
    assert capsys.readouterr().out == (
        "schedagent stop-post: handed over under lease abc: "
        "1 job(s) left running for the next agent\n"
    )


async def test_otherwise_the_handover_goes_and_the_jobs_are_killed_then_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "handover.json"
    handover.write(path, LEFT)
    connect = Connections(SystemdFake(loaded={SLICE}))
    assert await stop_post(env("signal"), path, connect) == 0
    assert not path.exists()
    assert connect.fake.calls("KillUnit") + connect.fake.calls("StopUnit") == [
        ("KillUnit", [SLICE, "all", signal.SIGKILL]),
        ("StopUnit", [SLICE, "replace"]),
    ]
    assert [m.member for m in connect.fake.sent][-2:] == ["KillUnit", "StopUnit"]
    assert capsys.readouterr().out == (
        "schedagent stop-post: the agent ended with signal: "
        "jobs killed (schedagent-jobs.slice stopped)\n"
    )


async def test_no_slice_loaded_is_no_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connect = Connections(SystemdFake())  # no job ever ran: systemd knows no slice
    assert await stop_post(env("success"), tmp_path / "handover.json", connect) == 0
    assert len(connect.fake.calls("KillUnit") + connect.fake.calls("StopUnit")) == 2
    assert "no handover: jobs killed" in capsys.readouterr().out


async def test_an_unusable_handover_is_removed_and_the_jobs_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "handover.json"
    path.write_bytes(b'{"invocation_id": "' + INVOCATION.encode())  # cut short
    connect = Connections(SystemdFake(loaded={SLICE}))
    assert await stop_post(env("success"), path, connect) == 0
    assert not path.exists() and connect.count == 1
    assert "no handover: jobs killed" in capsys.readouterr().out


async def test_systemd_out_of_reach_is_said_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "handover.json"
    handover.write(path, LEFT)
    connect = Connections(refused="cannot reach the system bus: gone")
    assert await stop_post(env("watchdog"), path, connect) == EXIT_UNREACHABLE
    assert not path.exists()  # whatever systemd does, no agent adopts these jobs
    assert capsys.readouterr().out == (
        "schedagent stop-post: the agent ended with watchdog, but cannot kill the jobs: "
        "cannot reach the system bus: gone\n"
    )
    refusing = SystemdFake(loaded={SLICE})
    refusing.refuse["KillUnit"] = "org.freedesktop.DBus.Error.AccessDenied"
    assert await stop_post(env("signal"), path, Connections(refusing)) == EXIT_UNREACHABLE
    assert "cannot kill the jobs: systemd refused KillUnit" in capsys.readouterr().out


def run_cli(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        # No systemd here, whatever the machine has: the bus is not there.
        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path / 'no-bus'}",
        **extra,
    }
    command = [sys.executable, "-m", "schedagent", "stop-post"]
    command += ["--handover", str(tmp_path / "handover.json")]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)


def test_the_command_says_in_one_line_what_it_did(tmp_path: Path) -> None:
    handover.write(tmp_path / "handover.json", LEFT)
    kept = run_cli(tmp_path, SERVICE_RESULT="success", INVOCATION_ID=INVOCATION)
    assert (kept.returncode, kept.stderr) == (0, "")
    assert kept.stdout.startswith("schedagent stop-post: handed over under lease abc: ")
    unreachable = run_cli(tmp_path, SERVICE_RESULT="signal", INVOCATION_ID=INVOCATION)
    assert (unreachable.returncode, unreachable.stderr) == (EXIT_UNREACHABLE, "")
    [line] = unreachable.stdout.splitlines()
    assert line.startswith(
        "schedagent stop-post: the agent ended with signal, but cannot kill the jobs: "
        "cannot reach the system bus"
    ), line
    assert not (tmp_path / "handover.json").exists()
