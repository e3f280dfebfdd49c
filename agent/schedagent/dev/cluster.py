"""A local etcd, NATS and agents as child processes, for `schedagent dev` and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import yaml

from schedagent.config import parse_config
from schedagent.core.signing import SigningKey, public_text
from schedagent.dev.procs import (
    ETCD_DEFAULT_PORTS,
    HOST,
    NATS_DEFAULT_PORT,
    EtcdServer,
    HarnessError,
    ManagedProcess,
    NatsServer,
    free_port,
    pick_port,
    wait_for,
)

AGENT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "schedagent")


class AgentProcess(ManagedProcess):
    """One `schedagent run` with its own YAML config, log and working directory."""

    def __init__(
        self,
        name: str,
        base_dir: Path | str,
        *,
        etcd_endpoint: str,
        nats_url: str,
        etcd_prefix: str = "/schedagent",
        nats_prefix: str = "sched",
        overrides: Mapping[str, Any] | None = None,
        command: Sequence[str] = AGENT_COMMAND,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.dir = Path(base_dir)
        self.config_path = self.dir / "agent.yaml"
        self.config: dict[str, Any] = {
            "node_name": name,
            "labels": {},
            "log_level": "info",
            "etcd": {"endpoints": etcd_endpoint.split(","), "prefix": etcd_prefix},
            "nats": {"urls": [nats_url], "prefix": nats_prefix},
            "security": {"trusted_keys": [public_text(harness_key()[0].public)]},
            # A port of its own: agents share this host, and tests run side by side.
            "metrics": {"listen": f"{HOST}:{free_port()}"},
        }
        _merge(self.config, overrides or {})
        # Unbuffered so a failing test's log tail shows the agent's last words.
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        child_env["NO_PROXY"] = child_env["no_proxy"] = _no_proxy(child_env)
        argv = [*command, "run", "--config", str(self.config_path)]
        super().__init__(name, argv, self.dir / "agent.log", env=child_env, cwd=self.dir)
        # The job processes of an incarnation that was SIGKILLed: outside systemd they
        # outlive it, and the cluster ends those still running when it stops.
        self.orphans: list[psutil.Process] = []

    @property
    def metrics_url(self) -> str | None:
        """Where this agent serves /metrics (None: metrics.listen is null)."""
        listen = self.config.get("metrics", {}).get("listen")
        return None if listen is None else f"http://{listen}/metrics"

    def write_config(self) -> Path:
        """Validate the config with the agent's own parser, then write it."""
        parse_config(self.config, str(self.config_path))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), "utf-8")
        return self.config_path

    def start(self) -> None:
        self.write_config()
        super().start()

    def kill(self) -> int | None:
        if self.running and self.pid is not None:
            with contextlib.suppress(psutil.Error):  # gone already: it took its jobs along
                self.orphans.extend(psutil.Process(self.pid).children(recursive=True))
        return super().kill()

    def kill_orphans(self) -> int:
        """SIGKILL what killed incarnations left running (psutil checks each is still
        the process found, not a reused PID); how many were still alive."""
        alive = 0
        for proc in self.orphans:
            try:
                proc.kill()
                alive += 1
            except psutil.Error:
                continue
        self.orphans.clear()
        return alive


def _etcd_members(
    base_dir: Path, count: int, ports: tuple[int | None, int | None]
) -> list[EtcdServer]:
    """One member on the given ports, or a cluster of count members on free ports."""
    if count == 1:
        client, peer = pick_port(ports[0]), pick_port(ports[1])
        return [EtcdServer(base_dir / "etcd", client_port=client, peer_port=peer)]
    names = [f"etcd{i}" for i in range(1, count + 1)]
    peers = {name: free_port() for name in names}
    initial = ",".join(f"{name}=http://{HOST}:{port}" for name, port in peers.items())
    return [
        EtcdServer(base_dir / name, peer_port=peers[name], name=name, initial_cluster=initial)
        for name in names
    ]


def _start_etcd(members: list[EtcdServer]) -> None:
    """Start every member before waiting on any: a member is healthy only with a quorum."""
    if len(members) == 1:
        members[0].start()
        return
    for member in members:
        ManagedProcess.start(member)
    for member in members:
        wait_for(member.ready, member.ready_timeout, f"{member.name} to be ready")


_HARNESS_KEY: tuple[SigningKey, Path] | None = None


def harness_key() -> tuple[SigningKey, Path]:
    """The operator key this process's agents trust (one per process), and its file.

    Dev clusters and tests run signed jobs only, like production.
    """
    global _HARNESS_KEY
    if _HARNESS_KEY is None:
        path = Path(tempfile.mkdtemp(prefix="schedagent-key-")) / "operator.key"
        key = SigningKey.generate()
        key.save(path)
        _HARNESS_KEY = (key, path)
    return _HARNESS_KEY


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _no_proxy(env: Mapping[str, str]) -> str:
    # grpc and nats clients would send 127.0.0.1 traffic through http_proxy otherwise.
    current = env.get("NO_PROXY") or env.get("no_proxy") or ""
    return ",".join(p for p in (current, "127.0.0.1,localhost") if p)


class LocalCluster:
    """One etcd, one NATS and N agents under one base dir.

    start()/stop() block; from inside a running event loop use `async with` or
    `await cluster.astart()`, which run them in a worker thread.
    """

    def __init__(
        self,
        agents: int | Sequence[str] = 3,
        *,
        agent_overrides: Mapping[str, Any] | None = None,
        per_agent: Mapping[str, Mapping[str, Any]] | None = None,
        etcd_prefix: str = "/schedagent",
        nats_prefix: str = "sched",
        base_dir: Path | str | None = None,
        default_ports: bool = False,
        start_timeout: float = 30.0,
        agent_command: Sequence[str] = AGENT_COMMAND,
        etcd_members: int = 1,
    ) -> None:
        names = [f"node{i}" for i in range(1, agents + 1)] if isinstance(agents, int) else agents
        self._own_dir = base_dir is None
        self.keep_dir = False
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="schedagent-dev-"))
        self.etcd_prefix = etcd_prefix
        self.nats_prefix = nats_prefix
        self.start_timeout = start_timeout
        self.agent_command = tuple(agent_command)
        self.agent_overrides = dict(agent_overrides or {})
        self.signing_key, self.key_path = harness_key()
        etcd_ports, nats_port = (
            (ETCD_DEFAULT_PORTS, NATS_DEFAULT_PORT) if default_ports else ((None, None), None)
        )
        self.etcd_members = _etcd_members(self.base_dir, etcd_members, etcd_ports)
        self.etcd = self.etcd_members[0]
        self.nats = NatsServer(self.base_dir / "nats", port=pick_port(nats_port))
        self.agents: dict[str, AgentProcess] = {}
        for name in names:
            self._new_agent(name, (per_agent or {}).get(name, {}))
        self._started = False

    @property
    def etcd_endpoint(self) -> str:
        return self.etcd.url

    @property
    def etcd_endpoints(self) -> list[str]:
        return [member.url for member in self.etcd_members]

    def live_etcd(self) -> EtcdServer:
        """A running member (the first one may have been killed by a test)."""
        return next((m for m in self.etcd_members if m.running), self.etcd)

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def processes(self) -> Iterator[ManagedProcess]:
        yield from self.etcd_members
        yield self.nats
        yield from self.agents.values()

    def dead(self) -> list[ManagedProcess]:
        """Children that exited without stop() or kill() being asked of them."""
        return [p for p in self.processes() if p.exited_unexpectedly]

    def start(self) -> None:
        """Start etcd, NATS and the agents, and wait until every agent is registered."""
        try:
            _start_etcd(self.etcd_members)
            self.nats.start()
            for agent in self.agents.values():
                agent.start()
            self._started = True
            self.wait_for_nodes()
        except BaseException as exc:
            # Keep the logs that explain a failure (not a Ctrl-C).
            self.keep_dir = self.keep_dir or isinstance(exc, Exception)
            try:
                self.stop()
            except Exception as stop_error:
                exc.add_note(f"while stopping after the failure: {stop_error!r}")
            raise

    def add_agent(self, name: str, **overrides: Any) -> AgentProcess:
        """One more agent; if the cluster is running, start it and wait until it registers."""
        agent = self._new_agent(name, overrides)
        if self._started:
            agent.start()
            self.wait_for_nodes([name])
        return agent

    def wait_for_nodes(
        self, names: Iterable[str] | None = None, timeout: float | None = None
    ) -> None:
        """Wait until `{prefix}/nodes/{name}` exists in etcd for each agent named."""
        wanted = list(self.agents if names is None else names)
        keys = {f"{self.etcd_prefix}/nodes/{name}" for name in wanted}
        timeout = self.start_timeout if timeout is None else timeout

        def registered() -> bool:
            for proc in (self.live_etcd(), *(self.agents[name] for name in wanted)):
                if not proc.running:
                    raise HarnessError(f"{proc.name} exited with code {proc.returncode}")
            try:
                return keys <= set(self.live_etcd().keys(f"{self.etcd_prefix}/nodes/"))
            except (OSError, ValueError):
                return False

        try:
            wait_for(registered, timeout, f"{', '.join(wanted)} to register in etcd", 0.1)
        except HarnessError as exc:
            tails = "".join(describe(self.agents[n]) for n in wanted)
            raise HarnessError(f"{exc}{tails}") from None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop agents (together), then NATS, then etcd; raise every failure at the end."""
        errors: list[Exception] = []
        agents = list(self.agents.values())
        # SIGTERM to all first so the agents' drains overlap instead of adding up.
        for agent in agents:
            _attempt(errors, agent.terminate)
        deadline = time.monotonic() + timeout
        for agent in agents:
            _attempt(errors, agent.wait, deadline - time.monotonic())
        for agent in agents:
            agent.kill_orphans()
        _attempt(errors, self.nats.stop)
        for member in self.etcd_members:
            _attempt(errors, member.stop)
        self._started = False
        if self._own_dir and not self.keep_dir and not errors:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise ExceptionGroup("errors while stopping the local cluster", errors)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalCluster:
        await self.astart()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    def _new_agent(self, name: str, overrides: Mapping[str, Any]) -> AgentProcess:
        if name in self.agents:
            raise HarnessError(f"there is already an agent named {name!r}")
        merged: dict[str, Any] = {}
        _merge(merged, self.agent_overrides)
        _merge(merged, overrides)
        agent = AgentProcess(
            name,
            self.base_dir / name,
            etcd_endpoint=",".join(self.etcd_endpoints),
            nats_url=self.nats.url,
            etcd_prefix=self.etcd_prefix,
            nats_prefix=self.nats_prefix,
            overrides=merged,
            command=self.agent_command,
        )
        self.agents[name] = agent
        return agent


def _attempt(errors: list[Exception], action: Callable[..., object], *args: Any) -> None:
    try:
        action(*args)
    except Exception as exc:
        errors.append(exc)


def describe(proc: ManagedProcess, lines: int = 30) -> str:
    return f"\n--- {proc.name}: last {lines} lines of {proc.log_path}\n{proc.log_tail(lines)}"
