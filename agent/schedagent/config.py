"""Agent configuration: frozen dataclasses loaded from YAML and validated once."""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from schedagent import configvalues as checks
from schedagent.configvalues import IPNetwork
from schedagent.core.sizes import memory_limit, task_limit
from schedagent.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/schedagent"
    timeout: float = 5.0
    # With https:// endpoints the agent talks TLS to etcd: it checks the members'
    # certificates against tls_ca (the system's CAs if unset) and shows tls_cert/tls_key
    # when etcd asks for a client certificate (--client-cert-auth).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # gRPC checks every member against one name: the first endpoint's host unless set,
    # so with several endpoints each member's certificate must carry this name.
    tls_server_name: str | None = None


@dataclasses.dataclass(frozen=True)
class NatsConfig:
    urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    prefix: str = "sched"
    # JetStream copies of each stream: set to the NATS cluster size (at most 5) so
    # losing one server loses no dispatch, event or output.
    stream_replicas: int = 1
    # The CA that signed the servers' certificates: with it, the agent talks TLS and
    # checks the server's certificate and name (a server that requires TLS needs it).
    tls_ca: str | None = None


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    tail_bytes: int = 4096
    chunk_bytes: int = 16384
    stream_max_bytes: int = 256 * 1024 * 1024
    stream_max_age: float = 7 * 86400.0
    journal: bool = True  # job output lines also go to journald (when logging goes there)


@dataclasses.dataclass(frozen=True)
class JobsConfig:
    kill_grace: float = 5.0
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    dispatch_timeout: float = 10.0
    drain_timeout: float = 60.0
    max_cmd_bytes: int = 65536
    # Seconds a finished job's record stays in etcd after its last change (0: forever);
    # the leader deletes older ones, so etcd does not fill up with history.
    retention: float = 7 * 86400.0


@dataclasses.dataclass(frozen=True)
class SecurityConfig:
    # Secure by default: an agent runs only jobs signed by a key listed here.
    require_signed_jobs: bool = True
    trusted_keys: tuple[str, ...] = ()  # "ed25519:<base64>", as `schedctl keygen` prints
    signature_max_age: float = 86400.0  # a signed job must first start within this
    run_as_allowed: tuple[str, ...] = ()  # users `--user` may name (needs a root agent)
    # Whom a job that names no user runs as (a root agent; the package sets schedjob, an
    # unprivileged user that cannot read this file or the etcd key); None: the agent's.
    job_user: str | None = None
    max_env_bytes: int = 65536
    max_requests_per_second: float = 1000.0  # per agent; API requests beyond are refused


@dataclasses.dataclass(frozen=True)
class ContainmentConfig:
    # Each job in its own cgroup where this agent can write a hierarchy; false: process
    # groups only (docs/containment.md).
    cgroups: bool = True
    # Where systemd is PID 1 and the agent is root: each attempt in transient units
    # (a slice and a service) instead; false: the cgroups above, or process groups.
    systemd: bool = True
    # Limits for a job that names none (--memory, --tasks); None: unlimited.
    memory: int | None = None
    tasks: int | None = None


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    # host:port of the Prometheus /metrics endpoint; None: no endpoint. Loopback by
    # default: opening it to a Prometheus host is a decision (a firewall rule, a port).
    listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    # The peers that may scrape it (addresses or networks); empty: whoever reaches it.
    allow: tuple[IPNetwork, ...] = ()


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    node_name: str = dataclasses.field(default_factory=lambda: default_node_name())
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cpus: float | None = None
    node_ttl: int = 10
    log_level: str = "info"
    log_target: str = "auto"  # auto: journald when systemd connected stderr to it
    etcd: EtcdConfig = dataclasses.field(default_factory=EtcdConfig)
    nats: NatsConfig = dataclasses.field(default_factory=NatsConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    jobs: JobsConfig = dataclasses.field(default_factory=JobsConfig)
    security: SecurityConfig = dataclasses.field(default_factory=SecurityConfig)
    containment: ContainmentConfig = dataclasses.field(default_factory=ContainmentConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)


def default_node_name() -> str:
    """The short hostname, reduced to what a NATS subject token allows."""
    short = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", short).strip("-") or "node"
    return cleaned[:63]


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate one YAML file; raises ConfigError naming the key at fault."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(where, "-", f"cannot read: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(where, "-", f"not valid YAML: {exc}") from exc
    return parse_config(raw if raw is not None else {}, where)


def parse_config(raw: object, where: str = "<config>") -> AgentConfig:
    """Build an AgentConfig from already-parsed YAML."""
    return _Parser(where).section(raw, AgentConfig, "")


T = TypeVar("T")


class _Parser:
    """Walks a mapping against a dataclass, naming the dotted key of any problem."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.where, key.rstrip(".") or "-", problem)

    def section(self, raw: object, cls: type[T], prefix: str) -> T:
        if not isinstance(raw, dict):
            raise self.fail(prefix, f"must be a mapping, not {checks.kind(raw)}")
        # typeshed wants a dataclass type here; every T this walks is one (_SECTIONS).
        fields = {f.name: f for f in dataclasses.fields(cast(Any, cls))}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            dotted = f"{prefix}{key}"
            if key not in fields:
                raise self.fail(dotted, f"unknown key (known: {', '.join(sorted(fields))})")
            values[key] = self.value(str(key), value, dotted)
        built = cls(**values)
        for check in _SECTION_CHECKS.get(cls, ()):
            problem = check(built)
            if problem is not None:
                raise self.fail(prefix + problem[0], problem[1])
        return built

    def value(self, key: str, value: object, dotted: str) -> Any:
        if key in _SECTIONS:
            return self.section(value, _SECTIONS[key], dotted + ".")
        check = _CHECKS.get(dotted)
        if check is None:  # pragma: no cover - every field has a check
            raise self.fail(dotted, "no validator")
        try:
            return check(value)
        except (TypeError, ValueError) as exc:
            raise self.fail(dotted, str(exc)) from None


_SECTIONS: dict[str, type] = {
    "etcd": EtcdConfig,
    "nats": NatsConfig,
    "output": OutputConfig,
    "jobs": JobsConfig,
    "containment": ContainmentConfig,
    "security": SecurityConfig,
    "metrics": MetricsConfig,
}


_CHECKS: dict[str, Callable[[object], Any]] = {
    "node_name": checks.node_name,
    "labels": checks.labels,
    "cpus": checks.optional_cpus,
    "node_ttl": checks.number(2, integer=True),
    "log_level": checks.log_level,
    "log_target": checks.log_target,
    "etcd.endpoints": checks.urls(("http", "https")),
    "etcd.prefix": checks.key_prefix,
    "etcd.timeout": checks.number(0.1),
    "etcd.tls_ca": checks.optional_file,
    "etcd.tls_cert": checks.optional_file,
    "etcd.tls_key": checks.optional_file,
    "etcd.tls_server_name": checks.optional_host_name,
    "nats.urls": checks.urls(("nats", "tls")),
    "nats.prefix": checks.subject_prefix,
    "nats.stream_replicas": checks.number(1, integer=True),
    "nats.tls_ca": checks.optional_file,
    "output.tail_bytes": checks.number(0, integer=True),
    "output.chunk_bytes": checks.number(256, integer=True),
    "output.stream_max_bytes": checks.number(1024, integer=True),
    "output.stream_max_age": checks.number(1),
    "output.journal": checks.boolean,
    "jobs.kill_grace": checks.number(0),
    "jobs.retry_backoff": checks.number(0),
    "jobs.retry_backoff_max": checks.number(0),
    "jobs.dispatch_timeout": checks.number(1),
    "jobs.drain_timeout": checks.number(0),
    "jobs.max_cmd_bytes": checks.number(1, integer=True),
    "jobs.retention": checks.number(0),
    "security.require_signed_jobs": checks.boolean,
    "security.trusted_keys": checks.public_keys,
    "security.signature_max_age": checks.number(1),
    "security.run_as_allowed": checks.user_names,
    "security.job_user": lambda v: None if v is None else checks.user_names([v])[0],
    "security.max_env_bytes": checks.number(0, integer=True),
    "security.max_requests_per_second": checks.number(1),
    "containment.cgroups": checks.boolean,
    "containment.systemd": checks.boolean,
    "containment.memory": lambda v: None if v is None else memory_limit(v, "a memory limit"),
    "containment.tasks": lambda v: None if v is None else task_limit(v, "a task limit"),
    "metrics.listen": checks.listen_address,
    "metrics.allow": checks.networks,
}


def _etcd_tls_consistent(etcd: EtcdConfig) -> tuple[str, str] | None:
    """The TLS keys make sense only together and with https:// endpoints."""
    schemes = {urlsplit(url).scheme for url in etcd.endpoints}
    if len(schemes) > 1:
        return "endpoints", "mixes http:// and https:// endpoints; use one scheme for all"
    if (etcd.tls_cert is None) != (etcd.tls_key is None):
        return "tls_key", "set etcd.tls_cert and etcd.tls_key together (or neither)"
    tls_keys = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
    if schemes == {"http"}:
        for key in tls_keys:
            if getattr(etcd, key) is not None:
                return key, "is set, but etcd.endpoints are http://; TLS needs https:// endpoints"
    return None


# Checks across the keys of one section, run once it is built: (key, problem) or None.
_SECTION_CHECKS: dict[type, tuple[Callable[[Any], tuple[str, str] | None], ...]] = {
    EtcdConfig: (_etcd_tls_consistent,),
}
