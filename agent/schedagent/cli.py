"""The `schedagent` command: run the agent, check a config file, or start a dev cluster."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys

import click

from schedagent import __version__
from schedagent.config import DEFAULT_PATH, load_config
from schedagent.errors import ConfigError

EXIT_CONFIG = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="schedagent")
def main() -> None:
    """schedagent: runs shell jobs across a fleet of hosts (etcd + NATS)."""


@main.command()
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_PATH,
    show_default=True,
    help="Agent configuration file (YAML).",
)
def run(config_path: str) -> None:
    """Run the agent in the foreground."""
    # gRPC's fork handlers quiesce its threads around a fork, and when they lose that
    # race the child aborts before it can exec: a run-as job (forked, not vforked, to
    # switch users) died of SIGABRT at once. The agent forks only to exec a job, the
    # case gRPC documents this switch for. Before the first import of grpc.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    from schedagent.daemon.app import run_agent
    from schedagent.etcd.tls import load_etcd_tls
    from schedagent.host.logs import setup_logging

    try:
        config = load_config(config_path)
        etcd_tls = load_etcd_tls(config.etcd, config_path)
    except ConfigError as exc:
        click.echo(f"schedagent: invalid configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(config.log_level, config.node_name, config.log_target)
    # systemd's watchdog ends a stuck agent with SIGABRT: leave every thread's stack
    # in the journal, so the stuck spot is known.
    faulthandler.enable()
    sys.exit(asyncio.run(run_agent(config, config_path, etcd_tls)))


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a configuration file and exit (status 2 if it is invalid)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        click.echo(f"schedagent: invalid configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(f"{path}: OK (node {config.node_name})")


@main.command()
@click.option(
    "--agents",
    default=3,
    show_default=True,
    type=click.IntRange(1, 32),
    help="How many agents to start.",
)
def dev(agents: int) -> None:
    """Start etcd, NATS and N agents on loopback, in the foreground (Ctrl-C stops all)."""
    from schedagent.dev.command import run_dev

    sys.exit(run_dev(agents=agents))
