"""`schedctl completion SHELL`: the shell's completion script, from click's own machinery."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
# The variable the generated script sets when it asks schedctl for completions.
COMPLETE_VAR = "_SCHEDCTL_COMPLETE"


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash: schedctl completion bash > ~/.local/share/bash-completion/completions/schedctl
    zsh:  schedctl completion zsh > "${fpath[1]}/_schedctl"
    fish: schedctl completion fish > ~/.config/fish/completions/schedctl.fish
    The .deb installs all three for every user.
    """
    root = ctx.find_root()
    found = get_completion_class(shell)
    assert found is not None  # every name in SHELLS is one of click's own
    script = found(root.command, {}, root.info_name or "schedctl", COMPLETE_VAR).source()
    click.echo(script, nl=False)
