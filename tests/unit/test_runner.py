"""Running a command: output, exit status, timeout and cancel kill the whole process group."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from helpers import live_processes_with, marker
from schedagent.core.model import Outcome
from schedagent.host import child
from schedagent.host.runner import Command, job_environment, run_command


@pytest.fixture(autouse=True, params=["pidfd", "thread"])
def reaping(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test twice: exits seen through a pidfd, and through the fallback thread
    used where the kernel gives no pidfds."""
    if request.param == "thread":
        monkeypatch.setattr(child, "_pidfd_open", lambda pid: None)
    yield request.param


def command(cmd: str, timeout: float | None = None, grace: float = 1.0, **env: str) -> Command:
    return Command(
        cmd=cmd, env=job_environment(env, {}), cwd=None, timeout=timeout, kill_grace=grace
    )


async def run(
    cmd: Command, cancel: asyncio.Event | None = None, pids: list[int] | None = None
) -> tuple[Outcome, dict[str, bytes]]:
    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def on_output(stream: str, data: bytes) -> None:
        out[stream] += data

    seen: list[int] = [] if pids is None else pids
    outcome = await run_command(
        cmd, on_output, cancel or asyncio.Event(), lambda group: seen.append(group.pid or 0)
    )
    return outcome, out


async def wait_until_gone(text: str, deadline: float = 5.0) -> list[psutil.Process]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        left = live_processes_with(text)
        if not left:
            return []
        await asyncio.sleep(0.05)
    return live_processes_with(text)


async def test_output_and_exit_code() -> None:
    outcome, out = await run(command("echo out; echo err >&2; exit 3"))
    assert outcome.exit_code == 3 and outcome.signal is None
    assert out == {"stdout": b"out\n", "stderr": b"err\n"}
    assert outcome.ended_at >= outcome.started_at


async def test_environment_is_the_spec_plus_a_safe_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/notify")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    _, out = await run(command("env", GREETING="hi"))
    lines = out["stdout"].decode().splitlines()
    assert "GREETING=hi" in lines
    assert not [line for line in lines if line.startswith(("NOTIFY_SOCKET=", "AWS_SECRET"))]


async def test_timeout_kills_the_whole_group() -> None:
    m = marker()
    started = time.monotonic()
    outcome, _ = await run(command(f"sleep {m} & sleep {m}", timeout=0.5))
    assert outcome.timed_out and not outcome.canceled
    assert time.monotonic() - started < 5
    assert await wait_until_gone(f"sleep {m}") == []


async def test_cancel_kills_group_even_if_it_ignores_sigterm() -> None:
    m = marker()
    cancel = asyncio.Event()
    task = asyncio.create_task(
        run(command(f"trap '' TERM; sleep {m} & sleep {m}", grace=0.3), cancel)
    )
    end = time.monotonic() + 5
    while not live_processes_with(f"sleep {m}") and time.monotonic() < end:
        await asyncio.sleep(0.05)
    cancel.set()
    outcome, _ = await task
    assert outcome.canceled
    assert await wait_until_gone(f"sleep {m}") == []


async def test_background_children_do_not_outlive_the_job() -> None:
    m = marker()
    outcome, _ = await run(command(f"sleep {m} >/dev/null 2>&1 & echo started"))
    assert outcome.exit_code == 0
    assert await wait_until_gone(f"sleep {m}") == []


async def test_missing_cwd_is_an_error_not_a_crash() -> None:
    cmd = Command(
        cmd="true", env=job_environment({}, {}), cwd="/nonexistent/dir", timeout=None, kill_grace=1
    )
    outcome, _ = await run(cmd)
    assert outcome.error is not None and "cannot start" in outcome.error


async def test_job_runs_in_its_own_session() -> None:
    _, out = await run(command("ps -o sid= -p $$"))
    assert int(out["stdout"].decode().strip()) != os.getsid(0)


async def test_output_larger_than_a_pipe_arrives_whole_on_both_streams() -> None:
    cmd = "head -c 300000 /dev/zero; head -c 200000 /dev/zero >&2; echo end"
    outcome, out = await run(command(cmd))
    assert outcome.exit_code == 0
    assert out["stdout"] == b"\0" * 300000 + b"end\n"
    assert out["stderr"] == b"\0" * 200000


async def test_the_shell_is_reaped_not_left_a_zombie() -> None:
    pids: list[int] = []
    outcome, _ = await run(command("exit 4"), pids=pids)
    assert outcome.exit_code == 4
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(pids[0]).status()


async def test_a_killed_shell_reports_its_signal() -> None:
    outcome, _ = await run(command("kill -KILL $$"))
    assert outcome.signal == 9 and outcome.exit_code is None


async def test_waiting_for_a_job_takes_no_thread(reaping: str) -> None:
    if reaping == "thread":
        pytest.skip("the fallback waits in a thread by design")
    m = marker()
    cancel = asyncio.Event()
    before = threading.active_count()
    task = asyncio.create_task(run(command(f"sleep {m}"), cancel))
    end = time.monotonic() + 5
    while not live_processes_with(f"sleep {m}") and time.monotonic() < end:
        await asyncio.sleep(0.05)
    during = threading.active_count()  # the job runs: a thread per child would exist now
    cancel.set()
    outcome, _ = await task
    assert outcome.canceled
    assert during == before


async def test_cancelling_the_runner_itself_kills_the_whole_group() -> None:
    m = marker()
    task = asyncio.create_task(run(command(f"sleep {m} & sleep {m}")))
    end = time.monotonic() + 5
    while len(live_processes_with(f"sleep {m}")) < 2 and time.monotonic() < end:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until_gone(f"sleep {m}") == []
