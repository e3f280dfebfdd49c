"""schedctl's named clusters: the config file's contexts, `schedctl context`, credentials."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import yaml

# Written by the Ansible role for everyone on an admin host; a user's own file adds
# contexts (or replaces one of the same name) and keeps which one is current.
SYSTEM_CONFIG = Path("/etc/schedctl/config.yaml")
CONTEXT_KEYS = frozenset({"nats", "prefix", "nats_ca", "credentials", "key"})
# They travel inside the URLs nats-py parses (it does not unquote them), as the Ansible
# role's generated passwords do.
URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")


@dataclasses.dataclass(frozen=True)
class Context:
    """One cluster: where its NATS servers are and how to prove who we are to them."""

    name: str
    nats: tuple[str, ...]
    prefix: str | None = None
    nats_ca: str | None = None
    credentials: str | None = None  # a file: user:password on its first line
    key: str | None = None  # the operator key that signs for this cluster

    def urls(self) -> str:
        """The NATS URLs, with the credentials file's user and password in each."""
        if self.credentials is None:
            return ",".join(self.nats)
        user, password = read_credentials(Path(self.credentials).expanduser())
        return ",".join(_with_userinfo(url, f"{user}:{password}") for url in self.nats)


@dataclasses.dataclass(frozen=True)
class ContextConfig:
    contexts: Mapping[str, Context]
    current: str | None


def user_config_path() -> Path:
    """$SCHEDCTL_CONFIG, else $XDG_CONFIG_HOME/schedctl/config.yaml (~/.config by default)."""
    if os.environ.get("SCHEDCTL_CONFIG"):
        return Path(os.environ["SCHEDCTL_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "schedctl" / "config.yaml"


def load_config() -> ContextConfig:
    """The system file's contexts overlaid with the user's; `current` from the user's first."""
    contexts: dict[str, Context] = {}
    current: str | None = None
    paths = [user_config_path()] if os.environ.get("SCHEDCTL_CONFIG") else []
    paths = paths or [SYSTEM_CONFIG, user_config_path()]
    for path in paths:
        raw = _read_yaml(path)
        contexts.update(_parse_contexts(raw.get("contexts"), path))
        current = _optional_str(raw.get("current"), path, "current") or current
    return ContextConfig(contexts, current)


def chosen_context(name: str | None) -> Context | None:
    """The context named (--context, SCHEDCTL_CONTEXT), else the current one, else none."""
    config = load_config()
    wanted = name or config.current
    if wanted is None:
        return None
    if wanted not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise click.UsageError(f"no context {wanted!r} in {_sources()} (known: {known})")
    return config.contexts[wanted]


def read_credentials(path: Path) -> tuple[str, str]:
    """user:password from a file that only its owner (and group) may read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise click.UsageError(f"cannot read the credentials file {path}: {exc.strerror}") from None
    if mode & stat.S_IRWXO:
        raise click.UsageError(
            f"the credentials file {path} is open to others (mode {stat.S_IMODE(mode):04o}): "
            f"chmod o-rwx {path}"
        )
    user, sep, password = text.splitlines()[0].partition(":") if text.strip() else ("", "", "")
    if not sep or not URL_SAFE.match(user) or not URL_SAFE.match(password):
        raise click.UsageError(
            f"the credentials file {path} must hold user:password (letters, digits and ._~- only)"
        )
    return user, password


def _with_userinfo(url: str, secret: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{secret}@{host}"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.UsageError(f"cannot read {path}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise click.UsageError(f"{path}: must be a mapping with contexts: and current:")
    return raw


def _parse_contexts(raw: object, path: Path) -> dict[str, Context]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise click.UsageError(f"{path}: contexts must map names to clusters")
    return {str(name): _parse_context(str(name), body, path) for name, body in raw.items()}


def _parse_context(name: str, body: object, path: Path) -> Context:
    where = f"contexts.{name}"
    if not isinstance(body, dict):
        raise click.UsageError(f"{path}: {where} must be a mapping")
    unknown = sorted(set(body) - CONTEXT_KEYS)
    if unknown:
        raise click.UsageError(f"{path}: {where}: unknown key(s) {', '.join(unknown)}")
    nats = body.get("nats")
    if isinstance(nats, str):
        nats = [nats]
    if not isinstance(nats, list) or not nats or not all(isinstance(u, str) for u in nats):
        raise click.UsageError(f"{path}: {where}.nats must be a URL or a list of URLs")
    if any("@" in urlsplit(url).netloc for url in nats):
        raise click.UsageError(f"{path}: {where}.nats: put user:password in a credentials file")
    fields = {
        key: _optional_str(body.get(key), path, f"{where}.{key}") for key in CONTEXT_KEYS - {"nats"}
    }
    return Context(name, tuple(nats), **fields)


def _optional_str(value: object, path: Path, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise click.UsageError(f"{path}: {key} must be a string")


def _sources() -> str:
    if os.environ.get("SCHEDCTL_CONFIG"):
        return str(user_config_path())
    return f"{SYSTEM_CONFIG} or {user_config_path()}"


@click.group()
def context() -> None:
    """Named clusters (contexts) from the config file: list them, pick one."""


@context.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def list_contexts(as_json: bool) -> None:
    """List the contexts; * marks the current one."""
    config = load_config()
    if as_json:
        body = [
            {
                "name": c.name,
                "current": c.name == config.current,
                "nats": list(c.nats),
                "prefix": c.prefix,
            }
            for c in config.contexts.values()
        ]
        click.echo(json.dumps(body, indent=2))
        return
    if not config.contexts:
        click.echo(f"no contexts in {_sources()}", err=True)
    for c in sorted(config.contexts.values(), key=lambda c: c.name):
        mark = "*" if c.name == config.current else " "
        click.echo(f"{mark} {c.name}\t{','.join(c.nats)}\t{c.prefix or 'sched'}")


@context.command()
@click.argument("name")
def use(name: str) -> None:
    """Make NAME the current context (kept in the user's config file)."""
    config = load_config()
    if name not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise click.UsageError(f"no context {name!r} in {_sources()} (known: {known})")
    path = user_config_path()
    raw = _read_yaml(path)
    raw["current"] = name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    click.echo(f"current context: {name}")


# The cli group's parameters a context fills in when the command line and the
# environment left them at their defaults.
_FROM_CONTEXT = {"url", "prefix", "ca_file", "key_path"}
# Commands that work without a cluster, so a broken context does not stop them.
OFFLINE_COMMANDS = frozenset({"context", "completion", "keygen"})


def overlay(ctx: click.Context, name: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """values, with what the chosen context sets wherever a default stood."""
    if ctx.invoked_subcommand in OFFLINE_COMMANDS:
        return values
    chosen = chosen_context(name)
    if chosen is None:
        return values
    merged = dict(values)
    for param in _FROM_CONTEXT:
        source = ctx.get_parameter_source(param)
        if source in (None, click.core.ParameterSource.DEFAULT):
            value = _context_value(chosen, param)
            if value is not None:
                merged[param] = value
    return merged


def _context_value(chosen: Context, param: str) -> str | None:
    if param == "url":
        return chosen.urls()  # reads the credentials file only when it is needed
    if param == "prefix":
        return chosen.prefix
    if param == "ca_file":
        return chosen.nats_ca
    return chosen.key
