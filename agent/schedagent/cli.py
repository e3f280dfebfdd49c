"""The `schedagent` command: run the agent, check a config file, start a dev cluster, stop-post."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import sys
from collections.abc import Sequence

from schedagent import __version__, paths
from schedagent.errors import ConfigError

EXIT_CONFIG = 2
MAX_DEV_AGENTS = 32

# argparse, not click (which schedctl uses): the agent process is this command, and
# click stays resident in every agent for nothing (docs/performance.md, footprint).
# Each command imports what it needs itself: stop-post must start fast (a crashed
# agent's jobs live until it has killed them), and it needs neither YAML nor the config.


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="schedagent",
        description="schedagent: runs shell jobs across a fleet of hosts (etcd + NATS).",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s, version {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_cmd = commands.add_parser("run", help="Run the agent in the foreground.")
    run_cmd.add_argument(
        "--config",
        dest="config_path",
        default=paths.CONFIG,
        help=f"Agent configuration file (YAML). [default: {paths.CONFIG}]",
    )
    check = commands.add_parser(
        "check-config", help="Validate a configuration file and exit (status 2 if it is invalid)."
    )
    check.add_argument("path")
    dev_cmd = commands.add_parser(
        "dev",
        help="Start etcd, NATS and N agents on loopback, in the foreground (Ctrl-C stops all).",
    )
    dev_cmd.add_argument(
        "--agents",
        type=_dev_agents,
        default=3,
        help=f"How many agents to start (1 to {MAX_DEV_AGENTS}). [default: 3]",
    )
    stop_post_cmd = commands.add_parser(
        "stop-post",
        help="The unit's ExecStopPost=: keep the jobs for the next agent after a clean "
        "handover, else kill them (reads $SERVICE_RESULT and $INVOCATION_ID).",
    )
    stop_post_cmd.add_argument(
        "--handover",
        default=paths.HANDOVER,
        help=f"The handover file. [default: {paths.HANDOVER}]",
    )
    return top


def _dev_agents(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= count <= MAX_DEV_AGENTS:
        raise argparse.ArgumentTypeError(f"{count} is not in the range 1 to {MAX_DEV_AGENTS}")
    return count


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "run":
        run(args.config_path)
    elif args.command == "check-config":
        check_config(args.path)
    elif args.command == "stop-post":
        stop_post(args.handover)
    else:
        dev(args.agents)


def run(config_path: str) -> None:
    """Run the agent in the foreground."""
    # gRPC's fork handlers quiesce its threads around a fork, and when they lose that
    # race the child aborts before it can exec: a run-as job (forked, not vforked, to
    # switch users) died of SIGABRT at once. The agent forks only to exec a job, the
    # case gRPC documents this switch for. Before the first import of grpc.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    from schedagent.config import load_config
    from schedagent.daemon.app import run_agent
    from schedagent.etcd.tls import load_etcd_tls
    from schedagent.host.logs import setup_logging

    try:
        config = load_config(config_path)
        etcd_tls = load_etcd_tls(config.etcd, config_path)
    except ConfigError as exc:
        print(f"schedagent: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    setup_logging(config.log_level, config.node_name, config.log_target)
    # systemd's watchdog ends a stuck agent with SIGABRT: leave every thread's stack
    # in the journal, so the stuck spot is known.
    faulthandler.enable()
    sys.exit(asyncio.run(run_agent(config, config_path, etcd_tls)))


def check_config(path: str) -> None:
    """Validate a configuration file and exit (status 2 if it is invalid)."""
    from schedagent.config import load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"schedagent: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    print(f"{path}: OK (node {config.node_name})")


def dev(agents: int) -> None:
    """Start etcd, NATS and N agents on loopback, in the foreground (Ctrl-C stops all)."""
    from schedagent.dev.command import run_dev

    sys.exit(run_dev(agents=agents))


def stop_post(path: str) -> None:
    """The unit's ExecStopPost=: keep the jobs for the next agent, or kill them."""
    import logging
    from pathlib import Path

    from schedagent.daemon.stoppost import PREFIX, stop_post

    logging.basicConfig(level=logging.WARNING, format=f"{PREFIX}: %(message)s")
    sys.exit(asyncio.run(stop_post(os.environ, Path(path))))
