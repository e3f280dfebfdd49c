"""systemd/schedagent.service: verify is clean, exposure as documented, sane bounds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from schedagent.config import AgentConfig, JobsConfig
from schedagent.host.service import watchdog_problem

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "schedagent.service"
DOC = ROOT / "docs" / "systemd.md"
EXEC_START = "/usr/bin/schedagent run --config /etc/schedagent/agent.yaml"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        # Fail, not skip: CI must not pass without checking the unit.
        pytest.fail("systemd-analyze is not installed; run scripts/setup", pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_verify_is_clean(tmp_path: Path) -> None:
    """The unit byte for byte, under --root: a file system like this host's, where the
    one thing the package would add, /usr/bin/schedagent, execs this venv's agent."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir()
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as on Debian 12
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    shim = root / "usr/bin/schedagent"
    shim.write_text(f'#!/bin/sh\nexec {Path(sys.executable).parent / "schedagent"} "$@"\n')
    shim.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(UNIT, root / "etc/systemd/system/schedagent.service")
    result = analyze("verify", f"--root={root}", "/etc/systemd/system/schedagent.service")
    # verify exits 0 even for unknown keys and bad values; it only warns: none allowed.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert unit_settings()["ExecStart"] == [EXEC_START]  # the shim stands in for nothing else


def test_exposure_is_the_documented_figure() -> None:
    result = analyze("security", "--offline=yes", str(UNIT))
    assert result.returncode == 0, result.stderr
    measured = re.search(r"Overall exposure level for schedagent.service: ([\d.]+)", result.stdout)
    documented = re.search(r"exposure level \*\*([\d.]+)\*\*", DOC.read_text())
    assert measured and documented, (result.stdout[-300:], "docs/systemd.md")
    # A change to the hardening must update docs/systemd.md with the new figure.
    assert measured.group(1) == documented.group(1)


def test_stop_timeout_outlasts_the_drain_and_nothing_escapes() -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    jobs = JobsConfig()
    stop = int(settings["TimeoutStopSec"][0].removesuffix("s"))
    assert stop > jobs.drain_timeout + jobs.kill_grace + 10  # + hand-back writes, NATS drain
    # mixed: SIGTERM to the agent alone (it drains), SIGKILL to the whole cgroup at the end.
    assert settings["KillMode"] == ["mixed"]


def test_the_watchdog_kills_a_frozen_agent_before_its_jobs_run_elsewhere() -> None:
    """docs/semantics.md, "Fenced execution": the watchdog and the default node_ttl fit, and a
    frozen (SIGSTOPped) agent is killed by it at once, its jobs with it."""
    settings = unit_settings()
    watchdog = float(settings["WatchdogSec"][0].removesuffix("s"))
    assert watchdog_problem(watchdog, AgentConfig().node_ttl) is None
    # SIGABRT would wait for the stopped process (TimeoutAbortSec=) before SIGKILL.
    assert settings["WatchdogSignal"] == ["SIGKILL"]
    # The agent refuses a bad pair at start (exit 2): restarting it cannot help.
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["KillMode"] == ["mixed"]  # the final SIGKILL reaches every job
