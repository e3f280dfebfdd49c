"""Job signatures: what they cover, and every way a bad one is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from schedagent.core.signing import (
    Signature,
    SignatureRejected,
    SigningKey,
    parse_public,
    public_text,
    verify,
)

SPEC = {"cmd": "make backup", "cpus": 1.0, "env": {"A": "1"}, "labels": {}, "retries": 0}


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def trusted(*keys: SigningKey) -> dict[str, object]:
    return {k.key_id: k.public for k in keys}


def test_a_good_signature_verifies(key: SigningKey) -> None:
    sig = key.sign(SPEC, now=1000.0)
    assert verify(SPEC, sig, trusted(key), max_age=300, now=1010.0) == key.key_id  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"cmd": "rm -rf /"},
        {"env": {"A": "2"}},
        {"cwd": "/tmp"},
        {"user": "root"},
        {"node": "other"},
        {"timeout": 5},
        {"retries": 3},
        {"after": ["0" * 20]},
    ],
)
def test_any_change_to_what_runs_breaks_it(key: SigningKey, change: dict[str, object]) -> None:
    sig = key.sign(SPEC, now=1000.0)
    with pytest.raises(SignatureRejected, match="does not match"):
        verify({**SPEC, **change}, sig, trusted(key), max_age=300, now=1000.0)  # type: ignore[arg-type]


PARENT, OTHER = "0" * 19 + "1", "0" * 19 + "2"


@pytest.mark.parametrize("change", [{"after": [OTHER]}, {"after": [PARENT, OTHER]}, {"after": []}])
def test_a_jobs_parents_are_signed(key: SigningKey, change: dict[str, object]) -> None:
    # Dropping or swapping a parent would run the job before (or without) the one it
    # was to follow.
    signed = {**SPEC, "after": [PARENT]}
    sig = key.sign(signed, now=1000.0)
    assert verify(signed, sig, trusted(key), max_age=300, now=1000.0)  # type: ignore[arg-type]
    with pytest.raises(SignatureRejected, match="does not match"):
        verify({**SPEC, **change}, sig, trusted(key), max_age=300, now=1000.0)  # type: ignore[arg-type]


def test_a_job_without_parents_signs_as_before_the_field_existed(key: SigningKey) -> None:
    # What an older schedctl signed (no "after" at all) still verifies once the agent's
    # record carries "after": [].
    sig = key.sign(SPEC, now=1000.0)
    stored = {**SPEC, "after": []}
    assert verify(stored, sig, trusted(key), max_age=300, now=1000.0)  # type: ignore[arg-type]


def test_unsigned_unknown_stale_and_garbled_are_refused(key: SigningKey) -> None:
    other = SigningKey.generate()
    sig = key.sign(SPEC, now=1000.0)
    with pytest.raises(SignatureRejected, match="not signed"):
        verify(SPEC, None, trusted(key), 300, now=1000.0)  # type: ignore[arg-type]
    with pytest.raises(SignatureRejected, match="unknown key"):
        verify(SPEC, sig, trusted(other), 300, now=1000.0)  # type: ignore[arg-type]
    with pytest.raises(SignatureRejected, match="old"):
        verify(SPEC, sig, trusted(key), 300, now=1400.0)  # type: ignore[arg-type]
    garbled = dataclasses.replace(sig, value="!!notbase64")
    with pytest.raises(SignatureRejected, match="does not match"):
        verify(SPEC, garbled, trusted(key), 300, now=1000.0)  # type: ignore[arg-type]
    forged = dataclasses.replace(sig, value=other.sign(SPEC, now=1000.0).value)
    with pytest.raises(SignatureRejected, match="does not match"):
        verify(SPEC, forged, trusted(key), 300, now=1000.0)  # type: ignore[arg-type]


def test_signature_shape_is_checked() -> None:
    with pytest.raises(SignatureRejected):
        Signature.from_dict({"key_id": "x"})
    with pytest.raises(SignatureRejected):
        Signature.from_dict({"key_id": "x", "nonce": "n", "signed_at": "yesterday", "value": "v"})


def test_keys_round_trip_through_files(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "operator.key"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = SigningKey.load(path)
    assert again.key_id == key.key_id
    assert parse_public(public_text(key.public)).public_bytes_raw() == key.public.public_bytes_raw()
    with pytest.raises(ValueError):
        parse_public("ssh-rsa AAAA")


@pytest.mark.parametrize("change", [{"memory": 128 << 20}, {"tasks": 20}, {"memory": None}])
def test_limits_are_signed_when_set(key: SigningKey, change: dict[str, object]) -> None:
    signed = {**SPEC, "memory": 64 << 20, "tasks": 10}
    sig = key.sign(signed, now=1000.0)
    with pytest.raises(SignatureRejected, match="does not match"):
        verify({**signed, **change}, sig, trusted(key), max_age=300, now=1010.0)  # type: ignore[arg-type]


def test_a_job_without_limits_signs_as_before_the_fields(key: SigningKey) -> None:
    # An older schedctl's signature (no memory, no tasks) verifies against the record
    # of this version, which has neither key (or, from elsewhere, null for both).
    sig = key.sign(SPEC, now=1000.0)
    for stored in (SPEC, {**SPEC, "memory": None, "tasks": None}):
        assert verify(stored, sig, trusted(key), max_age=300, now=1010.0) == key.key_id  # type: ignore[arg-type]
