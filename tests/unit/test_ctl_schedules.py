"""schedctl schedule: bad arguments say what is wrong and exit 2, before any connection."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from schedagent.core.signing import SigningKey
from schedagent.ctl.exits import EXIT_USAGE
from schedagent.ctl.main import cli
from schedagent.ctl.schedules import ScheduleNames, schedule_list


@pytest.fixture
def key(tmp_path: Path) -> str:
    path = tmp_path / "operator.key"
    SigningKey.generate().save(path)
    return str(path)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--cmd", "true"], "give one of --cron EXPR or --every DURATION"),
        (["--cmd", "true", "--cron", "@daily", "--every", "5m"], "give one of"),
        (["--cmd", "true", "--cron", "61 * * * *"], "bad cron expression"),
        (["--cmd", "true", "--cron", "* * *"], "cron must be 5 fields"),
        (["--cmd", "true", "--cron", "@daily", "--tz", "Mars/Base"], "unknown time zone"),
        (["--cmd", "true", "--every", "1.5s"], "whole seconds"),
        (["--cmd", "true", "--every", "soon"], "is not a duration"),
        (["--cmd", "true", "--every", "5m", "--tz", "Europe/Berlin"], "--tz applies to --cron"),
        (["--cmd", "true", "--every", "5m", "--concurrency", "sometimes"], "sometimes"),
        (["--cmd", "true", "--every", "5m", "--catch-up", "most"], "most"),
        (["--cmd", "true", "--every", "5m", "--catch-up-window", "0"], "longer than 0"),
        (["--cmd", "true", "--every", "5m", "--splay", "-3"], "is not a duration"),
        (["--cmd", "", "--every", "5m"], "non-empty command"),
        (["--every", "5m"], "Missing option '--cmd'"),
        (["--cmd", "true", "--every", "5m", "--after", "a,no spaces"], "is not a schedule name"),
        (["--cmd", "true", "--every", "5m", "--after", "nightly"], "cannot wait for itself"),
    ],
)
def test_bad_create_arguments_exit_2_saying_why(key: str, args: list[str], why: str) -> None:
    result = CliRunner().invoke(cli, ["--key", key, "schedule", "create", "nightly", *args])
    assert result.exit_code == EXIT_USAGE, result.output
    assert why in result.output


def test_a_bad_name_and_a_missing_key_exit_2(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner().invoke(cli, ["--key", key, "schedule", "pause", "no spaces"])
    assert result.exit_code == EXIT_USAGE and "1-128 of" in result.output
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCHEDCTL_KEY", raising=False)
    args = ["schedule", "create", "x", "--cmd", "true", "--every", "60"]
    result = CliRunner().invoke(cli, args)
    if Path("/etc/schedctl/operator.key").exists():
        pytest.skip("this host has an operator key in /etc/schedctl")
    assert result.exit_code == EXIT_USAGE and "schedules are always signed" in result.output


def test_after_takes_comma_separated_schedules_in_the_order_given() -> None:
    names = ScheduleNames().convert("extract, load", None, None)
    assert names == ("extract", "load")
    assert schedule_list(None, None, [names, ("load", "report")]) == ["extract", "load", "report"]  # type: ignore[arg-type]
