"""Logging setup: journald entries with fields under systemd, else one line per record on stderr."""

from __future__ import annotations

import logging
import sys

from schedagent.host import journal


def setup_logging(level: str, node: str, target: str = "auto") -> bool:
    """Route the root logger; True if records go to journald (target: auto/journal/stderr)."""
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s"))
    handler: logging.Handler = plain
    sink = journal.Journal() if journal.wanted(target) else None
    if sink is not None:
        handler = journal.JournalHandler(sink, node, fallback=plain)
    journal.activate(sink)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # nats-py and grpc narrate every reconnect at error level with tracebacks;
    # our own code logs those events once, in one line.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("aetcd").setLevel(logging.WARNING)
    return sink is not None


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
