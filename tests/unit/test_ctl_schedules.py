"""schedctl schedule: bad arguments say what is wrong and exit 2, before any connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from schedagent.core.signing import SigningKey
from schedagent.ctl.exits import EXIT_USAGE
from schedagent.ctl.main import cli
from schedagent.ctl.schedules import ScheduleNames, create, definition_from, schedule_list


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


def _definition(*args: str) -> dict[str, Any]:
    """The definition `schedule create NAME ARGS` would sign."""
    params = create.make_context("create", ["nightly", *args]).params
    return definition_from(params.pop("name"), {k: v for k, v in params.items() if k != "as_json"})


def test_all_nodes_fleet_or_a_roll_out_option_make_each_slot_a_fleet_run() -> None:
    every = ["--every", "5m", "--cmd", "true"]
    assert _definition(*every, "--all")["fleet"]["selector"] == {"all": True}
    nodes = _definition(*every, "--nodes", "a,b", "--max-parallel", "1", "--canary", "1")
    assert nodes["fleet"] == {
        "selector": {"nodes": ["a", "b"]},
        "policy": {
            "max_parallel": 1,
            "max_failures": None,
            "batch_wait": 0.0,
            "canary": 1,
            "offline_wait": 0.0,
        },
    }
    web = _definition(*every, "--label", "role=web", "--fleet")
    assert web["fleet"]["selector"] == {"labels": {"role": "web"}}
    assert web["job"]["labels"] == {} and web["job"]["node"] is None
    plain = _definition(*every, "--label", "role=web")  # a plain job's placement, as before
    assert "fleet" not in plain and plain["job"]["labels"] == {"role": "web"}


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--all", "--nodes", "a"], "give one of --all"),
        (["--max-parallel", "2"], "give one of --all"),
        (["--fleet"], "give one of --all"),
        (["--all", "--node", "a"], "--node pins one job"),
        (["--all", "--max-failures", "120%"], "share"),
        (["--all", "--after", "other"], "after is not supported for fleet schedules"),
    ],
)
def test_bad_fleet_schedule_arguments_exit_2_saying_why(
    key: str, args: list[str], why: str
) -> None:
    base = ["--key", key, "schedule", "create", "nightly", "--every", "5m", "--cmd", "true"]
    result = CliRunner().invoke(cli, [*base, *args])
    assert result.exit_code == EXIT_USAGE, result.output
    assert why in result.output
