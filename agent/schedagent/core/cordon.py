"""An operator's cordon of a node: no new placements there, and for a drain a deadline (pure).

Kept under its own key, `{p}/cordons/{node}`, with no lease: the node's own record
lives and dies with its agent's lease and is rewritten at every start, while a
cordon must outlast a restart of the agent (and may name a node that is down).
"""

from __future__ import annotations

import msgspec

from schedagent.core.model import SCHEMA_VERSION
from schedagent.core.names import NODE_NAME_RE

ACTIONS = ("cordon", "uncordon", "drain")
MAX_DEADLINE = 7 * 86400.0


class Cordon(msgspec.Struct, frozen=True):
    """A cordoned node; drain: its running jobs are handed back at `deadline` (wall
    clock, the agent's), or after the node's own jobs.drain_timeout if None."""

    node: str
    at: float
    by: str | None = None  # the operator key that signed it
    drain: bool = False
    deadline: float | None = None
    v: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, raw: bytes) -> Cordon:
        """ValueError for anything but a cordon record."""
        try:
            return _DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"cordon record: {exc}") from None

    def hand_back_at(self, drain_timeout: float) -> float | None:
        """When the node hands its running jobs back (None: a cordon, never)."""
        if not self.drain:
            return None
        return self.deadline if self.deadline is not None else self.at + drain_timeout

    def describe(self) -> str:
        return "draining" if self.drain else "cordoned"


def check_node_name(name: object) -> str:
    """The node name of a cordon request; ValueError naming what is wrong."""
    if not isinstance(name, str) or not NODE_NAME_RE.match(name):
        raise ValueError(f"node must be a node name, got {name!r}")
    return name


def check_deadline(seconds: object) -> float | None:
    """A drain's deadline in seconds from now (None: the node's drain_timeout)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"deadline must be a number of seconds, got {seconds!r}")
    if not 0 <= seconds <= MAX_DEADLINE:
        raise ValueError(f"deadline must be 0 to {MAX_DEADLINE:g} seconds, got {seconds!r}")
    return float(seconds)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Cordon)
