"""Whether a job is exactly a signed schedule's run: what the running agent checks.

A schedule's run carries no signature of its own: it carries the schedule's signed
definition and signature, and its slot (or, for `schedctl schedule run`, the operator's
signed run request). The agent that is about to start it checks that the definition is
signed by a trusted key, that the job is the definition's job field for field, that the
slot is one the definition really has (after its signing), that the job's id is the
slot's, and that the runs it waits for (`after`) are exactly its signed parents' runs of
that slot, so neither the leader nor the bus can make a schedule run anything else, or
drop or add a parent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schedagent.core.model import JobSpec
from schedagent.core.schedule import Schedule, job_fields
from schedagent.core.signing import (
    Signature,
    SignatureRejected,
    verify_schedule,
    verify_schedule_action,
)
from schedagent.errors import SpecError


@dataclasses.dataclass(frozen=True)
class RunCheck:
    """A run that passed: who signed it, the nonce to claim (a manual run's, else None),
    and the time its first start must be fresh from (the slot, or the run's signing)."""

    key_id: str
    nonce: str | None
    fresh_from: float


def verify_run(job_id: str, spec: JobSpec, trusted: Mapping[str, Ed25519PublicKey]) -> RunCheck:
    """The check of a schedule's run; SignatureRejected saying why it is not one."""
    origin = spec.schedule
    if origin is None:
        raise SignatureRejected("not a schedule's run")
    schedule = _schedule_of(origin)
    key = verify_schedule(schedule.definition.to_dict(), schedule.signature, trusted)
    if origin.get("name") != schedule.name:
        raise SignatureRejected("the run names another schedule than its definition")
    if spec.signature is not None:
        raise SignatureRejected("a schedule's run carries the schedule's signature, not its own")
    if job_fields(spec) != dict(schedule.definition.job):
        raise SignatureRejected("the run's job is not the signed schedule's job")
    slot, run = origin.get("slot"), origin.get("run")
    if slot is None:
        return _manual_run(schedule, spec, run, trusted)
    if run is not None or type(slot) is not int:
        raise SignatureRejected("a slot's run has an integer slot and no run request")
    if slot <= schedule.starts_at or not schedule.definition.slots().is_slot(slot):
        raise SignatureRejected(f"{slot} is not a slot of schedule {schedule.name}")
    if job_id != schedule.slot_job_id(slot):
        raise SignatureRejected(f"job {job_id} is not the run of slot {slot}")
    if spec.after != schedule.definition.parent_runs(slot):
        parents = ", ".join(schedule.definition.after) or "no schedule"
        raise SignatureRejected(
            f"the run's after is not the runs of slot {slot} of {parents} (as signed)"
        )
    return RunCheck(key, None, float(slot))


def _schedule_of(origin: Mapping[str, Any]) -> Schedule:
    try:
        return Schedule.from_dict(
            {"definition": origin.get("definition"), "signature": origin.get("signature")}
        )
    except SpecError as exc:
        raise SignatureRejected(f"the run's schedule is malformed: {exc}") from None


def _manual_run(
    schedule: Schedule, spec: JobSpec, raw: object, trusted: Mapping[str, Ed25519PublicKey]
) -> RunCheck:
    """`schedctl schedule run`: the operator signed a run of this version of the schedule."""
    if raw is None:
        raise SignatureRejected("a run outside the schedule needs a signed run request")
    if spec.after:
        raise SignatureRejected("a run outside the schedule waits for no parent")
    run = Signature.from_dict(raw)
    verify_schedule_action(
        "run", schedule.name, schedule.signature.value, run, trusted, float("inf")
    )
    return RunCheck(run.key_id, run.nonce, run.signed_at)
