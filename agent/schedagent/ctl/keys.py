"""schedctl's operator key: where it is found, and `schedctl keygen`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from schedagent.core.signing import SigningKey, public_text

# `schedagent dev` leaves its cluster's key here; only its own agents trust it.
DEV_KEY_PATH = "~/.config/schedctl/dev.key"
# Looked for in this order when neither --key nor SCHEDCTL_KEY names one.
DEFAULT_KEY_PATHS = ("~/.config/schedctl/operator.key", "/etc/schedctl/operator.key", DEV_KEY_PATH)


def find_key(path: str | None) -> SigningKey | None:
    """The operator key to sign with: the one named, else the first default that exists."""
    if path:
        return _load(Path(path).expanduser())
    for candidate in DEFAULT_KEY_PATHS:
        expanded = Path(candidate).expanduser()
        if expanded.exists():
            return _load(expanded)
    return None


def _load(path: Path) -> SigningKey:
    try:
        return SigningKey.load(path)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot read the operator key {path}: {exc}") from None


def sign_spec(spec: dict[str, Any], key: SigningKey | None) -> dict[str, Any]:
    if key is not None:
        spec["signature"] = key.sign(spec).to_dict()
    return spec


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Make an operator key at PATH (kept if it exists) and print its public key.

    Agents run jobs signed by keys in their security.trusted_keys; put the printed
    line there.
    """
    target = Path(path).expanduser()
    if target.exists():
        key = _load(target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = SigningKey.generate()
        key.save(target)
        os.chmod(target, 0o600)
    click.echo(public_text(key.public))
