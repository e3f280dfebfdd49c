"""SIGHUP: re-read the config file, apply what can change live, name what needs a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from schedagent.config import AgentConfig, load_config
from schedagent.errors import ConfigError
from schedagent.host.logs import set_level

log = logging.getLogger(__name__)

# Keys read afresh wherever they are used; everything else was baked into a
# connection, a subscription or a stream at start and needs a restart.
LIVE_KEYS = frozenset(
    {
        "labels",
        "cpus",
        "log_level",
        "output.tail_bytes",
        "output.chunk_bytes",
        "output.journal",
        "jobs.kill_grace",
        "jobs.drain_timeout",
        "jobs.max_cmd_bytes",
        # The gate and the API read these per job and per request.
        "security.require_signed_jobs",
        "security.trusted_keys",
        "security.signature_max_age",
        "security.run_as_allowed",
        "security.job_user",
        "security.max_env_bytes",
        "security.max_requests_per_second",
        # The worker reads the default limits per attempt (containment.cgroups is fixed
        # at start: the hierarchy is found then).
        "containment.memory",
        "containment.tasks",
    }
)


class HoldsConfig(Protocol):
    config: AgentConfig


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf of a config dataclass."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = value
    return out


def merge_live(old: AgentConfig, new: AgentConfig) -> tuple[AgentConfig, list[str], list[str]]:
    """(config to run with, live keys applied, changed keys that need a restart)."""
    before, after = flatten(old), flatten(new)
    changed = sorted(k for k in after if after[k] != before[k])
    applied = [k for k in changed if k in LIVE_KEYS]
    merged = old
    for key in applied:
        merged = _replace(merged, key.split("."), after[key])
    return merged, applied, [k for k in changed if k not in LIVE_KEYS]


def _replace(obj: Any, path: list[str], value: Any) -> Any:
    head, rest = path[0], path[1:]
    inner = _replace(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: inner})


class Reloader:
    """Holds the running config and hands a new one to every holder on a reload."""

    def __init__(
        self,
        path: str | None,
        config: AgentConfig,
        holders: Sequence[HoldsConfig],
        after: Callable[[], Awaitable[None]],
    ) -> None:
        self.path = path
        self.config = config
        self.holders = holders
        self.after = after  # e.g. re-register the node so new labels show at once
        self.problem: str | None = None

    async def reload(self) -> bool:
        """Apply the file's live changes; on an invalid file keep running as before."""
        if self.path is None:
            log.warning("reload requested, but the agent was not started from a file")
            return False
        try:
            new = await asyncio.to_thread(load_config, self.path)
        except ConfigError as exc:
            self.problem = f"reload failed, running with the previous configuration: {exc}"
            log.error("%s", self.problem)
            return False
        self.problem = None
        merged, applied, restart = merge_live(self.config, new)
        self.config = merged
        for holder in self.holders:
            holder.config = merged
        set_level(merged.log_level)
        if restart:
            log.warning("reload: %s changed; these take effect after a restart", ", ".join(restart))
        log.info("reloaded %s: %s", self.path, ", ".join(applied) or "no live change")
        await self.after()
        return True
