"""Whether a job is exactly a signed fleet run's part on this host: what the agent checks.

A part carries no signature of its own: it carries the group's signed definition and
signature, and its host. The agent about to start it checks that the definition is
signed by a trusted key, that the job is the definition's job field for field, pinned
to the part's host and waiting for nothing, that the host is this agent and one the
signed selector admits (by name, or by this agent's own labels), and that the job's id
is the one derived from (group, host). So neither the leader nor the bus can make a
group run anything else, or run it on a host outside its selector.

A schedule's slot's group is signed by its schedule (core/schedfleet.py): the part then
checks against the schedule's signature, claims a nonce per slot and host, and must
first start within the max age of its slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schedagent.core.fleet import Group, job_fields, part_job_id
from schedagent.core.model import JobSpec
from schedagent.core.schedfleet import verify_slot_group
from schedagent.core.signing import SignatureRejected, verify_group
from schedagent.errors import SpecError


@dataclasses.dataclass(frozen=True)
class PartCheck:
    """A part that passed: who signed the group, the nonce this host's part claims (one
    run per host per group), and the time its first start must be fresh from."""

    key_id: str
    nonce: str
    fresh_from: float


def verify_part(
    job_id: str,
    spec: JobSpec,
    here: tuple[str, Mapping[str, str]],
    trusted: Mapping[str, Ed25519PublicKey],
) -> PartCheck:
    """The check of a part on this agent (here: its name and labels); SignatureRejected
    saying why it is not one."""
    origin = spec.fleet
    if origin is None:
        raise SignatureRejected("not a fleet run's part")
    group = _group_of(origin)
    key, nonce, fresh_from = _signer(group, trusted)
    host, (node, labels) = origin.get("host"), here
    if origin.get("group") != group.id:
        raise SignatureRejected("the part names another group than its definition")
    if spec.signature is not None or spec.schedule is not None or spec.after:
        raise SignatureRejected("a fleet run's part carries the group's signature only")
    if job_fields(spec) != dict(group.definition.job) or spec.labels:
        raise SignatureRejected("the part's job is not the signed fleet run's job")
    if host != node or spec.node != node:
        raise SignatureRejected(f"the part is for host {host!r}, pinned to {spec.node!r}")
    if not group.definition.selector.admits(node, labels):
        raise SignatureRejected(f"host {node} is outside the fleet run's selector")
    if job_id != part_job_id(group.id, node):
        raise SignatureRejected(f"job {job_id} is not the part of {group.id} on {node}")
    return PartCheck(key, f"{nonce}.{node}", fresh_from)


def _signer(group: Group, trusted: Mapping[str, Ed25519PublicKey]) -> tuple[str, str, float]:
    """Who signed the group, its nonce (a slot's: the schedule's and the slot), and the
    time its parts' first starts must be fresh from (a slot's: the slot)."""
    if group.schedule is None:
        key = verify_group(group.definition.to_dict(), group.signature, trusted)
        return key, group.signature.nonce, group.signature.signed_at
    check = verify_slot_group(group, trusted)
    return check.key_id, f"{group.signature.nonce}.{check.slot}", float(check.slot)


def _group_of(origin: Mapping[str, object]) -> Group:
    """The group from a part's definition and signature (a record with no targets)."""
    try:
        return Group.from_dict(
            {
                "definition": origin.get("definition"),
                "signature": origin.get("signature"),
                "accepted_at": 0.0,
                "targets": [],
                "canceled": False,
                "done": False,
                "schedule": origin.get("schedule"),
            }
        )
    except SpecError as exc:
        raise SignatureRejected(f"the part's fleet run is malformed: {exc}") from None
