"""Ed25519 job signatures: schedctl signs a job's canonical form, the running agent verifies."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schedagent.errors import SchedagentError

PUBLIC_PREFIX = "ed25519:"
SEED_PREFIX = "ed25519-seed:"
# What a signature covers: everything that decides what runs, where, as whom.
SIGNED_FIELDS = ("cmd", "cpus", "cwd", "env", "labels", "node", "retries", "timeout", "user")
# Signed only when the job has it, so a job without it signs as it did before the field
# existed (an agent of either version verifies it); one with it fails at an older agent.
SIGNED_IF_SET = ("after", "memory", "tasks")


class SignatureRejected(SchedagentError):
    """A job's signature is missing, unknown, wrong, stale or replayed."""


@dataclasses.dataclass(frozen=True)
class Signature:
    key_id: str
    nonce: str
    signed_at: float
    value: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: object) -> Signature:
        if not isinstance(raw, dict) or set(raw) != {"key_id", "nonce", "signed_at", "value"}:
            raise SignatureRejected("signature must have key_id, nonce, signed_at and value")
        key_id, nonce, signed_at, value = (
            raw["key_id"],
            raw["nonce"],
            raw["signed_at"],
            raw["value"],
        )
        if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in (key_id, nonce, value)):
            raise SignatureRejected("signature fields must be short strings")
        if isinstance(signed_at, bool) or not isinstance(signed_at, int | float):
            raise SignatureRejected("signature signed_at must be a number")
        return cls(key_id, nonce, float(signed_at), value)


def canonical(spec: Mapping[str, Any], nonce: str, signed_at: float) -> bytes:
    """The bytes a signature covers: the signed fields, the nonce and the time, sorted."""
    body = {field: spec.get(field) for field in SIGNED_FIELDS}
    body["cpus"] = float(body["cpus"] if body["cpus"] is not None else 1.0)
    body["retries"] = int(body["retries"] or 0)
    # 1 and 1.0 must sign alike: the agent stores numbers as floats.
    body["timeout"] = None if body["timeout"] is None else float(body["timeout"])
    body["env"] = dict(body["env"] or {})
    body["labels"] = dict(body["labels"] or {})
    body["nonce"] = nonce
    body["signed_at"] = signed_at
    for field in SIGNED_IF_SET:
        value = spec.get(field)
        if value:
            body[field] = list(value) if isinstance(value, list | tuple) else value
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_cancel(job_id: str, nonce: str, signed_at: float) -> bytes:
    """The bytes a cancel's signature covers. The "action" key, which no job's canonical
    form has, keeps a job's signature from passing for a cancel and the other way round."""
    body = {"action": "cancel", "job": job_id, "nonce": nonce, "signed_at": signed_at}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def canonical_schedule(definition: Mapping[str, Any], nonce: str, signed_at: float) -> bytes:
    """The bytes a schedule's signature covers: its whole definition (the job it runs
    and when), the nonce and the time. The "action" key keeps it from passing for a
    job's signature or a cancel's, and the other way round."""
    body: dict[str, Any] = {"action": "schedule", "schedule": dict(definition)}
    body.update(nonce=nonce, signed_at=signed_at)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_schedule_action(
    action: str, name: str, schedule_value: str, nonce: str, signed_at: float
) -> bytes:
    """The bytes a pause, resume, delete or run of a schedule is signed over: the action,
    the schedule's name and its signature (so it holds for that version of it only)."""
    body: dict[str, Any] = {"action": f"schedule-{action}", "name": name}
    body["schedule"] = schedule_value
    body.update(nonce=nonce, signed_at=signed_at)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_group(definition: Mapping[str, Any], nonce: str, signed_at: float) -> bytes:
    """The bytes a fleet run's signature covers: its whole definition (id, job, selector,
    policy), the nonce and the time; "action" keeps it from passing for any other kind."""
    body: dict[str, Any] = {"action": "group", "group": dict(definition)}
    body.update(nonce=nonce, signed_at=signed_at)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_group_cancel(group_id: str, nonce: str, signed_at: float) -> bytes:
    """The bytes a cancel of a fleet run is signed over."""
    body = {"action": "group-cancel", "group": group_id, "nonce": nonce, "signed_at": signed_at}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()[:16]


def public_text(public: Ed25519PublicKey) -> str:
    return PUBLIC_PREFIX + base64.b64encode(public.public_bytes_raw()).decode()


def parse_public(text: str) -> Ed25519PublicKey:
    if not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f"a public key starts with {PUBLIC_PREFIX!r}")
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text[len(PUBLIC_PREFIX) :]))
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None


class SigningKey:
    """An operator's private key, stored as one line `ed25519-seed:<base64>`."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        text = Path(path).read_text().strip()
        if not text.startswith(SEED_PREFIX):
            raise ValueError(f"{path}: a signing key file holds one line {SEED_PREFIX}<base64>")
        seed = base64.b64decode(text[len(SEED_PREFIX) :])
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def save(self, path: str | Path) -> None:
        seed = self.private.private_bytes_raw()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(SEED_PREFIX + base64.b64encode(seed).decode() + "\n")

    def sign(self, spec: Mapping[str, Any], now: float | None = None) -> Signature:
        return self._sign(lambda nonce, at: canonical(spec, nonce, at), now)

    def sign_cancel(self, job_id: str, now: float | None = None) -> Signature:
        return self._sign(lambda nonce, at: canonical_cancel(job_id, nonce, at), now)

    def sign_schedule(self, definition: Mapping[str, Any], now: float | None = None) -> Signature:
        return self._sign(lambda nonce, at: canonical_schedule(definition, nonce, at), now)

    def sign_schedule_action(
        self, action: str, name: str, schedule_value: str, now: float | None = None
    ) -> Signature:
        return self._sign(
            lambda nonce, at: canonical_schedule_action(action, name, schedule_value, nonce, at),
            now,
        )

    def sign_group(self, definition: Mapping[str, Any], now: float | None = None) -> Signature:
        return self._sign(lambda nonce, at: canonical_group(definition, nonce, at), now)

    def sign_group_cancel(self, group_id: str, now: float | None = None) -> Signature:
        return self._sign(lambda nonce, at: canonical_group_cancel(group_id, nonce, at), now)

    def _sign(self, message: Callable[[str, float], bytes], now: float | None) -> Signature:
        nonce = os.urandom(16).hex()
        signed_at = time.time() if now is None else float(now)  # as a verifier reads it
        value = self.private.sign(message(nonce, signed_at))
        return Signature(self.key_id, nonce, signed_at, base64.b64encode(value).decode())


def verify(
    spec: Mapping[str, Any],
    signature: Signature | None,
    trusted: Mapping[str, Ed25519PublicKey],
    max_age: float,
    now: float | None = None,
) -> str:
    """The signing key's id if the signature holds; SignatureRejected with why if not.

    Replays within max_age are caught by the caller (a nonce may be used once).
    """
    if signature is None:
        raise SignatureRejected("job is not signed")
    message = canonical(spec, signature.nonce, signature.signed_at)
    return _verify(message, signature, trusted, max_age, now, "the job")


def verify_cancel(
    job_id: str,
    signature: Signature | None,
    trusted: Mapping[str, Ed25519PublicKey],
    max_age: float,
    now: float | None = None,
) -> str:
    """The signing key's id if this cancel of job_id is signed; SignatureRejected if not.

    A replayed cancel can only cancel the same job again, so no nonce is recorded.
    """
    if signature is None:
        raise SignatureRejected("cancel is not signed")
    message = canonical_cancel(job_id, signature.nonce, signature.signed_at)
    return _verify(message, signature, trusted, max_age, now, "this cancel")


def verify_schedule(
    definition: Mapping[str, Any],
    signature: Signature | None,
    trusted: Mapping[str, Ed25519PublicKey],
) -> str:
    """The signing key's id if the schedule's definition is signed as it is; else
    SignatureRejected. A schedule runs for as long as it exists, so its signature has
    no maximum age: each slot's first start must be fresh instead (the caller checks)."""
    if signature is None:
        raise SignatureRejected("schedule is not signed")
    message = canonical_schedule(definition, signature.nonce, signature.signed_at)
    return _verify(message, signature, trusted, float("inf"), None, "the schedule")


def verify_schedule_action(
    action: str,
    name: str,
    schedule_value: str,
    signature: Signature | None,
    trusted: Mapping[str, Ed25519PublicKey],
    max_age: float,
    now: float | None = None,
) -> str:
    """The signing key's id if this action on this version of the schedule is signed."""
    if signature is None:
        raise SignatureRejected(f"schedule {action} is not signed")
    message = canonical_schedule_action(
        action, name, schedule_value, signature.nonce, signature.signed_at
    )
    return _verify(message, signature, trusted, max_age, now, f"this schedule {action}")


def verify_group(
    definition: Mapping[str, Any],
    signature: Signature | None,
    trusted: Mapping[str, Ed25519PublicKey],
) -> str:
    """The signing key's id if the fleet run's definition is signed as it is; else
    SignatureRejected. No maximum age here: each part's first start must be fresh
    (the caller checks), and a roll-out may last longer than one host's run."""
    if signature is None:
        raise SignatureRejected("fleet run is not signed")
    message = canonical_group(definition, signature.nonce, signature.signed_at)
    return _verify(message, signature, trusted, float("inf"), None, "the fleet run")


def verify_group_cancel(
    group_id: str,
    signature: Signature | None,
    trusted: Mapping[str, Ed25519PublicKey],
    max_age: float,
    now: float | None = None,
) -> str:
    if signature is None:
        raise SignatureRejected("fleet run cancel is not signed")
    message = canonical_group_cancel(group_id, signature.nonce, signature.signed_at)
    return _verify(message, signature, trusted, max_age, now, "this fleet run cancel")


def _verify(
    message: bytes,
    signature: Signature,
    trusted: Mapping[str, Ed25519PublicKey],
    max_age: float,
    now: float | None,
    what: str,
) -> str:
    public = trusted.get(signature.key_id)
    if public is None:
        raise SignatureRejected(f"signed by unknown key {signature.key_id}")
    age = (time.time() if now is None else now) - signature.signed_at
    if not -60 <= age <= max_age:
        raise SignatureRejected(f"signature is {age:.0f}s old (limit {max_age:g}s)")
    try:
        value = base64.b64decode(signature.value, validate=True)
        public.verify(value, message)
    except (InvalidSignature, ValueError):
        raise SignatureRejected(f"signature by {signature.key_id} does not match {what}") from None
    return signature.key_id
