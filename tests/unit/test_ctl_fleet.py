"""schedctl's side of fleet runs: `host: line` output and the exit status of `run --wait`."""

from __future__ import annotations

import pytest

from schedagent.ctl.fleetview import (
    EXIT_HOSTS_FAILED,
    EXIT_HOSTS_MISSED,
    HostLines,
    exit_status,
)


def test_output_is_written_as_whole_lines_prefixed_by_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = HostLines("web1")
    lines.write("stdout", "hel")
    lines.write("stderr", "warn\n")
    lines.write("stdout", "lo\nwor")
    assert capsys.readouterr() == ("web1: hello\n", "web1: warn\n")
    lines.flush()
    assert capsys.readouterr().out == "web1: wor\n"


@pytest.mark.parametrize(
    ("counts", "status"),
    [
        ({"succeeded": 3}, 0),
        ({"succeeded": 2, "failed": 1}, EXIT_HOSTS_FAILED),
        ({"succeeded": 2, "canceled": 1, "unreachable": 1}, EXIT_HOSTS_FAILED),
        ({"succeeded": 2, "unreachable": 1}, EXIT_HOSTS_MISSED),
        ({"skipped": 3}, EXIT_HOSTS_MISSED),
    ],
)
def test_run_wait_exits_zero_only_if_every_host_succeeded(
    counts: dict[str, int], status: int
) -> None:
    assert exit_status(counts) == status
