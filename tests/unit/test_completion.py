"""`schedctl completion SHELL` prints click's script for that shell, and refuses others."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from schedagent.ctl.main import cli

# What each shell's script must hold to be that shell's: zsh's marker, fish's builtin,
# bash's registration; each asks schedctl through its own variable.
MARKERS = {
    "bash": "complete -o nosort -F _schedctl_completion schedctl",
    "zsh": "#compdef schedctl",
    "fish": "complete --no-files --command schedctl",
}


@pytest.mark.parametrize("shell", sorted(MARKERS))
def test_each_shell_gets_its_own_script(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell], prog_name="schedctl")
    assert result.exit_code == 0, result.output
    assert MARKERS[shell] in result.output
    assert f"_SCHEDCTL_COMPLETE={shell}_complete" in result.output


def test_an_unknown_shell_is_named_and_refused() -> None:
    result = CliRunner().invoke(cli, ["completion", "tcsh"], prog_name="schedctl")
    assert result.exit_code != 0
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.output
