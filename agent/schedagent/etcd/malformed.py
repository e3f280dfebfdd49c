"""Records in etcd that cannot be decoded: each is skipped, and logged once per key."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

# Keys remembered; past this many, the oldest are forgotten (and would be logged again).
REMEMBERED = 4096

_seen: collections.OrderedDict[str, int] = collections.OrderedDict()


def note(kind: str, key: str, raw: bytes, problem: object) -> None:
    """Log a malformed record once: not on every read or watch event that meets it again.

    A key logged is logged again only when its value changes, so a record rewritten
    badly once more is reported.
    """
    fingerprint = hash(raw)
    if _seen.get(key) == fingerprint:
        _seen.move_to_end(key)
        return
    _seen[key] = fingerprint
    _seen.move_to_end(key)
    while len(_seen) > REMEMBERED:
        _seen.popitem(last=False)
    log.warning("ignoring malformed %s record at %s: %s", kind, key, problem)


def decode(kind: str, key: str, raw: bytes, parse: Callable[[bytes], T]) -> T | None:
    """parse(raw), or None (noted) if it raises ValueError: one place decides what
    counts as a malformed record, for every kind of record."""
    try:
        return parse(raw)
    except ValueError as exc:
        note(kind, key, raw, exc)
        return None
