"""Admission at the worker: a job runs only if its signature, nonce and run-as user pass."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pwd
import time
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schedagent.config import SecurityConfig
from schedagent.core.fleet import Group
from schedagent.core.fleetrun import verify_part
from schedagent.core.model import Job, JobSpec
from schedagent.core.names import Keys
from schedagent.core.schedrun import verify_run
from schedagent.core.schedule import Schedule
from schedagent.core.signing import (
    Signature,
    SignatureRejected,
    key_id,
    parse_public,
    verify,
    verify_cancel,
    verify_group,
    verify_group_cancel,
    verify_schedule,
    verify_schedule_action,
)
from schedagent.errors import SchedagentError
from schedagent.etcd.store import Absent, Compare, Op, Put, Store, ValueIs

log = logging.getLogger(__name__)
audit_log = logging.getLogger("schedagent.audit")

NONCE_LEASE_SLACK = 3600


class Refused(SchedagentError):
    """The job may not run here; the message is the reason recorded on the job."""


def audit(
    event: str, job_id: str, key: str | None, outcome: str, level: int = logging.INFO
) -> None:
    """One record per security-relevant decision about a job, with fields journald can
    filter on (JOB_ID, KEY_ID, AUDIT_EVENT)."""
    _audit(event, "job", job_id, key, outcome, level)


def audit_group(
    event: str, group_id: str, key: str | None, outcome: str, level: int = logging.INFO
) -> None:
    """One record per security-relevant decision about a fleet run (GROUP, KEY_ID,
    AUDIT_EVENT)."""
    _audit(event, "group", group_id, key, outcome, level)


def audit_schedule(
    event: str, name: str, key: str | None, outcome: str, level: int = logging.INFO
) -> None:
    """One record per security-relevant decision about a schedule (SCHEDULE, KEY_ID,
    AUDIT_EVENT)."""
    _audit(event, "schedule", name, key, outcome, level)


def _audit(event: str, about: str, subject: str, key: str | None, outcome: str, level: int) -> None:
    field = "job_id" if about == "job" else about
    audit_log.log(
        level,
        "audit %s %s %s key %s: %s",
        event,
        about,
        subject,
        key or "-",
        outcome,
        extra={field: subject, "key_id": key or "-", "audit_event": event},
    )


def started_fresh(job: Job, signed_at: float, max_age: float) -> bool:
    """Whether an earlier attempt of this job started, within max_age of its signing
    (as the gate let it): then this attempt is not the first start."""
    current = job.attempt
    return any(
        a.started_at is not None and a.n < current and a.started_at - signed_at <= max_age
        for a in job.attempts
    )


class Gate:
    """Checks a job against this agent's security settings before it starts."""

    def __init__(
        self,
        security: Callable[[], SecurityConfig],
        store: Store,
        keys: Keys,
        here: Callable[[], tuple[str, Mapping[str, str]]] = lambda: ("", {}),
    ) -> None:
        self.security = security
        self.here = here  # this agent's node name and labels: a fleet part's host
        self.store = store
        self.keys = keys
        self._lease = 0
        self._lease_until = 0.0

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        return _trusted_keys(tuple(self.security().trusted_keys))

    def check_signature(self, spec: JobSpec, now: float, max_age: float) -> str | None:
        """The signing key id (None for an unsigned job where that is allowed)."""
        config = self.security()
        if spec.signature is None and not config.require_signed_jobs:
            return None
        try:
            signature = None if spec.signature is None else Signature.from_dict(spec.signature)
            return verify(spec.to_dict(), signature, self.trusted(), max_age, now)
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None

    def check_cancel(self, job_id: str, raw_signature: object, now: float) -> str | None:
        """The key id that signed this cancel (None if unsigned and that is allowed)."""
        config = self.security()
        if raw_signature is None and not config.require_signed_jobs:
            return None
        try:
            signature = None if raw_signature is None else Signature.from_dict(raw_signature)
            return verify_cancel(job_id, signature, self.trusted(), config.signature_max_age, now)
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None

    def check_schedule(self, schedule: Schedule) -> str:
        """The key id that signed the schedule; Refused if it is not signed by a trusted key
        (schedules are always signed: a schedule runs commands unattended, for long)."""
        try:
            return verify_schedule(
                schedule.definition.to_dict(), schedule.signature, self.trusted()
            )
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None

    def check_schedule_action(
        self, action: str, schedule: Schedule, raw_signature: object, now: float
    ) -> tuple[str, Signature]:
        """The key id and signature of a pause, resume, delete or run of this schedule."""
        try:
            signature = None if raw_signature is None else Signature.from_dict(raw_signature)
            key = verify_schedule_action(
                action,
                schedule.name,
                schedule.signature.value,
                signature,
                self.trusted(),
                self.security().signature_max_age,
                now,
            )
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None
        assert signature is not None
        return key, signature

    def check_group(self, group: Group, now: float) -> str:
        """The key id that signed the fleet run, signed within the max age (fleet runs
        are always signed, as schedules are); Refused if not."""
        try:
            key = verify_group(group.definition.to_dict(), group.signature, self.trusted())
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None
        if now - group.signature.signed_at > self.security().signature_max_age:
            raise Refused("signature rejected: the fleet run was signed too long ago")
        return key

    def check_group_cancel(self, group_id: str, raw_signature: object, now: float) -> str:
        try:
            signature = None if raw_signature is None else Signature.from_dict(raw_signature)
            max_age = self.security().signature_max_age
            return verify_group_cancel(group_id, signature, self.trusted(), max_age, now)
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None

    def check_user(self, job: Job) -> None:
        user = job.spec.user
        if user is None:
            return
        if user not in self.security().run_as_allowed:
            raise Refused(f"run-as refused: user {user!r} is not in this agent's run_as_allowed")
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise Refused(f"run-as refused: no user {user!r} on this host") from None
        if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != user:
            raise Refused(f"run-as refused: the agent cannot switch to {user!r} (not root)")

    def check(self, job: Job, now: float) -> Admission:
        """Raise Refused, or say who signed the job and which nonce it must claim. The
        nonce is not claimed here: the worker claims it in its start's transaction."""
        if job.spec.schedule is not None:
            return self._check_run(job, now)
        if job.spec.fleet is not None:
            return self._check_part(job, now)
        signer = self.check_signature(job.spec, now, max_age=float("inf"))
        self.check_user(job)
        signature = job.spec.signature
        if signature is None:
            return Admission(signer)
        # Only the first start must be fresh; a later attempt (a retry, a hand-back) may
        # come long after, when the nonce's lease may have expired, so the record says
        # which start this is, not the nonce claim.
        max_age = self.security().signature_max_age
        signed_at = float(signature["signed_at"])
        if not started_fresh(job, signed_at, max_age) and now - signed_at > max_age:
            raise Refused("signature rejected: signed too long before its first start")
        nonce = self.keys.nonce(str(signature["nonce"]))
        return Admission(
            signer, nonce, "signature rejected: replayed (its nonce belongs to another job)"
        )

    def _check_run(self, job: Job, now: float) -> Admission:
        """A schedule's run: exactly the signed schedule's job, of a slot it has (or a
        signed run request), first started within the max age of its slot (or request)."""
        try:
            check = verify_run(job.id, job.spec, self.trusted())
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None
        self.check_user(job)
        max_age = self.security().signature_max_age
        if not started_fresh(job, check.fresh_from, max_age) and now - check.fresh_from > max_age:
            raise Refused("signature rejected: its slot came too long before its first start")
        if check.nonce is None:
            return Admission(check.key_id)
        replayed = "signature rejected: replayed (its run request belongs to another job)"
        return Admission(check.key_id, self.keys.nonce(check.nonce), replayed)

    def _check_part(self, job: Job, now: float) -> Admission:
        """A fleet run's part: exactly the signed group's job, on this host, which its
        selector admits; first started within the max age of the group's signing; and
        the group's only part here (its nonce and this host, claimed at the start)."""
        try:
            check = verify_part(job.id, job.spec, self.here(), self.trusted())
        except SignatureRejected as exc:
            raise Refused(f"signature rejected: {exc}") from None
        self.check_user(job)
        max_age = self.security().signature_max_age
        if not started_fresh(job, check.fresh_from, max_age) and now - check.fresh_from > max_age:
            raise Refused("signature rejected: the fleet run was signed too long before this start")
        replayed = "signature rejected: replayed (this host's part of the run is another job)"
        return Admission(check.key_id, self.keys.nonce(check.nonce), replayed)

    async def nonce_claim(self, key: str, job_id: str, held: bool) -> Claim:
        """The compare and ops that make the nonce at key this job's in a transaction:
        held says it is the job's already (a later attempt), else it must be free."""
        if held:
            return Claim([ValueIs(key, job_id.encode())], [])
        lease = await self._nonce_lease()
        return Claim([Absent(key)], [Put(key, job_id.encode(), lease)])

    async def _nonce_lease(self) -> int:
        # Nonces must outlive the signature's max age; one lease serves many of them.
        now = time.monotonic()
        if now >= self._lease_until:
            ttl = int(self.security().signature_max_age + 2 * NONCE_LEASE_SLACK)
            self._lease = await self.store.grant_lease(ttl)
            self._lease_until = now + NONCE_LEASE_SLACK
        return self._lease


@dataclasses.dataclass(frozen=True)
class Admission:
    """What the gate let through: who signed it (None: unsigned, where allowed), the
    nonce key its start must claim (None: none), and the refusal if another job has it."""

    signer: str | None
    nonce: str | None = None
    replayed: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    compares: list[Compare]
    ops: list[Op]


@functools.lru_cache(maxsize=4)
def _trusted_keys(texts: tuple[str, ...]) -> dict[str, Ed25519PublicKey]:
    """Parsed once per set of keys (a reload brings a new set), not once per job."""
    keys = [parse_public(text) for text in texts]
    return {key_id(k): k for k in keys}
