"""Logging setup: one line per record on stderr (journald fields come with the systemd work)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str, node: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py and grpc narrate every reconnect at error level with tracebacks;
    # our own code logs those events once, in one line.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("aetcd").setLevel(logging.WARNING)
