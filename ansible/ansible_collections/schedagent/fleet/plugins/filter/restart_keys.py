"""The agent.yaml settings a running agent cannot take on a reload (SIGHUP), as one digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

DOCUMENTATION = r"""
name: restart_digest
short_description: Digest of the agent.yaml settings that take a restart
description:
  - Flattens an agent.yaml mapping to dotted keys, drops every key the agent reloads live
    (the list the agent role keeps in I(_schedagent_live_keys), and anything below one),
    and returns the sha256 of what is left, so that a change there, and only there,
    restarts the agent.
positional: live_keys
options:
  _input:
    description: The agent's configuration as a mapping.
    type: dict
    required: true
  live_keys:
    description: Dotted keys (C(jobs.drain_timeout)) the agent applies on a reload.
    type: list
    elements: str
    required: true
"""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        return {prefix.rstrip("."): value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(_flatten(inner, f"{prefix}{key}."))
    return out


def _is_live(key: str, live_keys: Iterable[str]) -> bool:
    return any(key == live or key.startswith(live + ".") for live in live_keys)


def restart_settings(config: Mapping[str, Any], live_keys: list[str]) -> dict[str, Any]:
    """Dotted key -> value for every setting outside live_keys."""
    return {k: v for k, v in _flatten(config).items() if not _is_live(k, live_keys)}


def restart_digest(config: Mapping[str, Any], live_keys: list[str]) -> str:
    """sha256 (hex) of restart_settings: no secret from agent.yaml can be read back from it."""
    text = json.dumps(restart_settings(config, live_keys), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class FilterModule:
    """schedagent.fleet.restart_digest."""

    def filters(self) -> dict[str, Any]:
        return {"restart_digest": restart_digest}
