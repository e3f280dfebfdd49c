"""A fleet run (group): its signed definition, its record in etcd, and its parts' jobs.

The operator signs the definition: the group's id, the job every host runs, which hosts
(the selector) and the roll-out policy. The accepting agent adds the target snapshot
(the known hosts the selector matched, online or not) and the record goes to etcd; the
leader makes one job per target (core/rollout.py decides when), with an id derived
from (group, host) and pinned to that host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from schedagent.core.model import JobSpec
from schedagent.core.signing import Signature, SignatureRejected
from schedagent.core.spec import parse_spec
from schedagent.errors import FleetError, SpecError

GROUP_ID_RE = re.compile(r"^g-[0-9a-f]{20}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
# What every host's part runs: the job's fields less where (node, labels: the selector's).
JOB_FIELDS = ("cmd", "cpus", "cwd", "env", "retries", "timeout", "user")
DEFINITION_FIELDS = frozenset({"id", "job", "selector", "policy"})
POLICY_FIELDS = frozenset({"max_parallel", "max_failures", "batch_wait", "canary", "offline_wait"})
MAX_TARGETS = 10000
MAX_SECONDS = 366 * 86400.0
PERCENT_RE = re.compile(r"^(\d{1,3})%$")


@dataclasses.dataclass(frozen=True)
class Selector:
    """Which hosts: all known ones, those with every label, or the listed names."""

    all: bool = False
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    nodes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.all:
            return {"all": True}
        if self.nodes:
            return {"nodes": list(self.nodes)}
        return {"labels": dict(self.labels)}

    def admits(self, host: str, labels: Mapping[str, str]) -> bool:
        """Whether a host with these labels is one the selector names."""
        if self.all:
            return True
        if self.nodes:
            return host in self.nodes
        return all(labels.get(k) == v for k, v in self.labels.items())


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the roll-out goes. A count is an int, a share of the targets "P%"; None:
    no limit (max_failures None: default, 0 when max_parallel is set)."""

    max_parallel: int | str | None = None
    max_failures: int | str | None = None
    batch_wait: float = 0.0
    canary: int = 0
    offline_wait: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def parallel(self, targets: int) -> int:
        """Hosts at once: a share rounds up (at least one host)."""
        if self.max_parallel is None:
            return max(targets, 1)
        return max(1, _resolve(self.max_parallel, targets, math.ceil))

    def failures_allowed(self, targets: int) -> int | None:
        """Failures tolerated (the roll-out stops once more failed); None: no limit."""
        limit = self.max_failures
        if limit is None:
            return None if self.max_parallel is None else 0
        return _resolve(limit, targets, math.floor)


def _resolve(value: int | str, targets: int, rounding: Any) -> int:
    if isinstance(value, int):
        return value
    match = PERCENT_RE.match(value)
    assert match is not None  # parse_definition checked it
    return int(rounding(targets * int(match[1]) / 100))


@dataclasses.dataclass(frozen=True)
class Definition:
    """What an operator signs."""

    id: str
    job: Mapping[str, Any]
    selector: Selector
    policy: Policy

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": dict(self.job),
            "selector": self.selector.to_dict(),
            "policy": self.policy.to_dict(),
        }


def parse_definition(raw: object, max_cmd_bytes: int = 65536) -> Definition:
    """A valid definition, normalised as it is signed; FleetError (a SpecError) if not."""
    if not isinstance(raw, dict):
        raise FleetError("a fleet run's definition must be a JSON object")
    unknown = sorted(set(raw) - DEFINITION_FIELDS)
    if unknown:
        raise FleetError(f"unknown fleet run field(s): {', '.join(unknown)}")
    group_id = raw.get("id")
    if not isinstance(group_id, str) or not GROUP_ID_RE.match(group_id):
        raise FleetError(f"id must be g- and 20 hex digits, got {group_id!r}")
    return Definition(
        group_id,
        _job(raw.get("job"), max_cmd_bytes),
        parse_selector(raw.get("selector")),
        parse_policy(raw.get("policy", {})),
    )


def _job(raw: object, max_cmd_bytes: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FleetError("job must be a JSON object with the job's fields")
    extra = sorted(set(raw) - set(JOB_FIELDS))
    if extra:
        raise FleetError(f"a fleet run's job has no field(s) {', '.join(extra)}")
    try:
        spec = parse_spec(raw, max_cmd_bytes)
    except SpecError as exc:
        raise FleetError(f"job: {exc}") from None
    return job_fields(spec)


def job_fields(spec: JobSpec) -> dict[str, Any]:
    """The fields of a job that a group fixes, as it signs them."""
    data = spec.to_dict()
    return {name: data[name] for name in JOB_FIELDS}


def parse_selector(raw: object) -> Selector:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise FleetError("selector must be one of {all: true}, {labels: {...}}, {nodes: [...]}")
    if raw.get("all") is True:
        return Selector(all=True)
    labels = raw.get("labels")
    if isinstance(labels, dict) and labels:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise FleetError("selector labels must map strings to strings")
        return Selector(labels=dict(labels))
    nodes = raw.get("nodes")
    if isinstance(nodes, list) and nodes:
        if not all(isinstance(n, str) and HOST_RE.match(n) for n in nodes):
            raise FleetError("selector nodes must be node names")
        if len(set(nodes)) != len(nodes) or len(nodes) > MAX_TARGETS:
            raise FleetError(f"selector nodes: distinct names, at most {MAX_TARGETS}")
        return Selector(nodes=tuple(nodes))
    raise FleetError("selector must be one of {all: true}, {labels: {...}}, {nodes: [...]}")


def parse_policy(raw: object) -> Policy:
    if not isinstance(raw, dict):
        raise FleetError("policy must be a JSON object")
    unknown = sorted(set(raw) - POLICY_FIELDS)
    if unknown:
        raise FleetError(f"unknown policy field(s): {', '.join(unknown)}")
    canary = raw.get("canary", 0)
    if isinstance(canary, bool) or not isinstance(canary, int) or not 0 <= canary <= MAX_TARGETS:
        raise FleetError(f"canary must be a number of hosts from 0 to {MAX_TARGETS}")
    return Policy(
        max_parallel=_count(raw.get("max_parallel"), "max_parallel", 1),
        max_failures=_count(raw.get("max_failures"), "max_failures", 0),
        batch_wait=_seconds(raw.get("batch_wait", 0.0), "batch_wait"),
        canary=canary,
        offline_wait=_seconds(raw.get("offline_wait", 0.0), "offline_wait"),
    )


def _count(value: object, name: str, low: int) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, str) and PERCENT_RE.match(value):
        if not 0 < int(value[:-1]) <= 100:
            raise FleetError(f"{name} as a share must be 1% to 100%")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_TARGETS:
        raise FleetError(f"{name} must be a number of hosts ({low} or more) or a share P%")
    return value


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FleetError(f"{name} must be a number of seconds")
    if not 0 <= value <= MAX_SECONDS:
        raise FleetError(f"{name} must be from 0 to {MAX_SECONDS:.0f} seconds")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Target:
    """A host the selector matched when the run was accepted, and whether it was online."""

    host: str
    online: bool


def snapshot(
    selector: Selector, known: Mapping[str, Mapping[str, str]], online: set[str]
) -> list[Target]:
    """The targets: the known hosts (name -> labels) the selector admits, in name order;
    with --nodes, every listed name (one never seen is offline: it will be unreachable)."""
    if selector.nodes:
        return [Target(host, host in online) for host in sorted(selector.nodes)]
    return [
        Target(host, host in online) for host in sorted(known) if selector.admits(host, known[host])
    ]


def part_job_id(group_id: str, host: str) -> str:
    """The job id of a group's part on a host: the group's millisecond clock (ids sort by
    time; retention relies on it) and 32 bits of a hash of (group, host), so every
    leader derives the same id and a second job for one host cannot be made."""
    digest = hashlib.sha256(f"fleet\0{group_id}\0{host}".encode()).hexdigest()
    return f"{group_id[2:14]}{digest[:8]}"


@dataclasses.dataclass(frozen=True)
class Group:
    """A group as etcd keeps it: the signed definition, the targets, and whether it was
    canceled or has ended (with its counts by result, once it has).

    A schedule's slot's group carries `schedule` ({name, slot, definition}: the signed
    schedule's definition) and that schedule's signature as its own: the operator
    signed the schedule, not each slot's group (core/schedfleet.py checks it).
    """

    definition: Definition
    signature: Signature
    accepted_at: float
    targets: tuple[Target, ...]
    canceled: bool = False
    done: bool = False
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    schedule: Mapping[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.definition.id

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "definition": self.definition.to_dict(),
            "signature": self.signature.to_dict(),
            "accepted_at": self.accepted_at,
            "targets": [[t.host, t.online] for t in self.targets],
            "canceled": self.canceled,
            "done": self.done,
            "counts": dict(self.counts),
            **({} if self.schedule is None else {"schedule": dict(self.schedule)}),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Group:
        """ValueError for anything but a group record."""
        try:
            return cls.from_dict(json.loads(raw))
        except (ValueError, SpecError, SignatureRejected) as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def from_dict(cls, data: object) -> Group:
        if not isinstance(data, dict):
            raise FleetError("a group record must be a JSON object")
        try:
            signature = Signature.from_dict(data.get("signature"))
        except SignatureRejected as exc:
            raise FleetError(f"group signature: {exc}") from None
        definition = parse_definition(data.get("definition"), 1 << 30)
        accepted, canceled, done = data.get("accepted_at"), data.get("canceled"), data.get("done")
        counts = data.get("counts", {})
        if not isinstance(accepted, int | float) or isinstance(accepted, bool):
            raise FleetError("a group record's accepted_at must be a number")
        if not isinstance(canceled, bool) or not isinstance(done, bool):
            raise FleetError("a group record's canceled and done must be true or false")
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            raise FleetError("a group record's counts must map results to numbers")
        targets = _targets(data.get("targets"))
        origin = _schedule_origin(data.get("schedule"))
        return cls(definition, signature, float(accepted), targets, canceled, done, counts, origin)

    def part_spec(self, host: str) -> JobSpec:
        """The job of the part on host: the signed job pinned there, carrying the group's
        definition and signature for the running agent to check (core/fleetrun.py)."""
        origin: dict[str, Any] = {
            "group": self.id,
            "host": host,
            "definition": self.definition.to_dict(),
            "signature": self.signature.to_dict(),
        }
        if self.schedule is not None:
            origin["schedule"] = dict(self.schedule)
        spec = parse_spec(dict(self.definition.job))
        return msgspec.structs.replace(spec, node=host, fleet=origin)

    def hosts(self) -> list[str]:
        return [t.host for t in self.targets]


def _schedule_origin(raw: object) -> dict[str, Any] | None:
    """A slot's group's schedule: its name, the slot and the signed definition (checked
    against the signature where a part runs, core/schedfleet.py)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"name", "slot", "definition"}:
        raise FleetError("a group's schedule is {name, slot, definition}")
    name, slot, definition = raw["name"], raw["slot"], raw["definition"]
    if not isinstance(name, str) or type(slot) is not int or not isinstance(definition, dict):
        raise FleetError("a group's schedule has a name, an integer slot and a definition")
    return {"name": name, "slot": slot, "definition": definition}


def _targets(raw: object) -> tuple[Target, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_TARGETS:
        raise FleetError(f"a group record's targets must be a list of at most {MAX_TARGETS}")
    targets = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise FleetError("a group record's target is [host, online]")
        if not isinstance(item[1], bool):
            raise FleetError("a group record's target is [host, online]")
        targets.append(Target(item[0], item[1]))
    return tuple(targets)
