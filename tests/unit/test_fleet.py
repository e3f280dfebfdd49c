"""Fleet run definitions, records and the agent's check of a part (core/fleet*.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from schedagent.core.fleet import (
    Group,
    Policy,
    Selector,
    Target,
    parse_definition,
    part_job_id,
    snapshot,
)
from schedagent.core.fleetrun import verify_part
from schedagent.core.model import JobSpec
from schedagent.core.signing import SignatureRejected, SigningKey
from schedagent.core.spec import parse_spec
from schedagent.errors import FleetError, SpecError

KEY = SigningKey.generate()
TRUSTED = {KEY.key_id: KEY.public}
GID = "g-0123456789abcdef0123"


def raw(selector: dict[str, Any] | None = None, **policy: Any) -> dict[str, Any]:
    return {
        "id": GID,
        "job": {"cmd": "echo hi", "cpus": 1, "env": {}, "retries": 0},
        "selector": selector or {"all": True},
        "policy": policy,
    }


def group(selector: dict[str, Any] | None = None, key: SigningKey = KEY) -> Group:
    definition = parse_definition(raw(selector))
    signature = key.sign_group(definition.to_dict())
    return Group(definition, signature, 0.0, (Target("a", True), Target("b", True)))


def test_definition_round_trips_as_signed() -> None:
    definition = parse_definition(raw(max_parallel="25%", max_failures=2, canary=1))
    assert parse_definition(definition.to_dict()) == definition
    assert definition.policy == Policy(max_parallel="25%", max_failures=2, canary=1)


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "nope"},
        {"selector": {"all": False}},
        {"selector": {"nodes": []}},
        {"selector": {"all": True, "nodes": ["a"]}},
        {"policy": {"max_parallel": 0}},
        {"policy": {"max_parallel": "0%"}},
        {"policy": {"max_failures": "101%"}},
        {"policy": {"canary": -1}},
        {"policy": {"batch_wait": -1}},
        {"policy": {"surprise": 1}},
        {"job": {"cmd": "x", "node": "a"}},
        {"job": {"cmd": ""}},
    ],
)
def test_bad_definitions_are_refused_with_a_reason(bad: dict[str, Any]) -> None:
    with pytest.raises(FleetError):
        parse_definition({**raw(), **bad})


def test_snapshot_takes_known_hosts_the_selector_admits_and_says_who_is_offline() -> None:
    known = {"a": {"zone": "x"}, "b": {"zone": "y"}, "c": {"zone": "x"}}
    online = {"a", "b"}
    assert snapshot(Selector(all=True), known, online) == [
        Target("a", True),
        Target("b", True),
        Target("c", False),
    ]
    zone_x = snapshot(Selector(labels={"zone": "x"}), known, online)
    assert zone_x == [Target("a", True), Target("c", False)]
    # A listed name never seen is a target too: it will be reported unreachable.
    assert snapshot(Selector(nodes=("z", "a")), known, online) == [
        Target("a", True),
        Target("z", False),
    ]


def test_part_ids_are_derived_from_group_and_host_and_look_like_job_ids() -> None:
    assert part_job_id(GID, "a") == part_job_id(GID, "a")
    assert part_job_id(GID, "a") != part_job_id(GID, "b")
    assert JobSpec(cmd="x") and len(part_job_id(GID, "a")) == 20


def test_group_record_round_trips() -> None:
    g = group()
    assert Group.from_json(g.to_json()) == g
    with pytest.raises(ValueError):
        Group.from_json(b'{"definition": 1}')


def test_submitting_a_part_is_refused() -> None:
    with pytest.raises(SpecError, match="fleet"):
        parse_spec({"cmd": "x", "fleet": {"group": GID}})


def check(g: Group, spec: JobSpec, host: str = "a", labels: dict[str, str] | None = None) -> str:
    job_id = part_job_id(g.id, str(spec.node))
    return verify_part(job_id, spec, (host, labels or {}), TRUSTED).key_id


def test_a_genuine_part_passes() -> None:
    g = group()
    assert check(g, g.part_spec("a")) == KEY.key_id


def test_an_altered_command_is_refused() -> None:
    g = group()
    spec = msgspec.structs.replace(g.part_spec("a"), cmd="rm -rf /")
    with pytest.raises(SignatureRejected, match="not the signed"):
        check(g, spec)


def test_an_altered_definition_is_refused() -> None:
    g = group()
    spec = g.part_spec("a")
    assert spec.fleet is not None
    definition = {**spec.fleet["definition"], "job": {**spec.fleet["definition"]["job"]}}
    definition["job"]["cmd"] = "evil"
    forged = msgspec.structs.replace(
        spec, cmd="evil", fleet={**spec.fleet, "definition": definition}
    )
    with pytest.raises(SignatureRejected, match="does not match"):
        check(g, forged)


def test_a_group_signed_by_an_unknown_key_is_refused() -> None:
    g = group(key=SigningKey.generate())
    with pytest.raises(SignatureRejected, match="unknown key"):
        check(g, g.part_spec("a"))


def test_a_host_outside_the_node_list_is_refused() -> None:
    g = group({"nodes": ["a", "b"]})
    with pytest.raises(SignatureRejected, match="outside"):
        check(g, g.part_spec("c"), host="c")


def test_a_host_without_the_labels_is_refused() -> None:
    g = group({"labels": {"role": "web"}})
    assert check(g, g.part_spec("a"), labels={"role": "web"}) == KEY.key_id
    with pytest.raises(SignatureRejected, match="outside"):
        check(g, g.part_spec("a"), labels={"role": "db"})


def test_a_part_for_another_host_is_refused_here() -> None:
    g = group()
    with pytest.raises(SignatureRejected, match="for host"):
        check(g, g.part_spec("b"), host="a")


def test_a_part_under_another_id_is_refused() -> None:
    g = group()
    with pytest.raises(SignatureRejected, match="is not the part"):
        verify_part("0" * 20, g.part_spec("a"), ("a", {}), TRUSTED)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"definition": {}, "signature": null}',
        b'{"signature": {"key_id": "k", "nonce": "n", "signed_at": 1, "value": "v"},'
        b' "definition": {"id": "g-0123456789abcdef0123", "job": {"cmd": "x"},'
        b' "selector": {"all": true}}, "accepted_at": "soon", "targets": [],'
        b' "canceled": false, "done": false}',
    ],
)
def test_a_malformed_group_record_is_a_value_error(raw: bytes) -> None:
    # What etcd/malformed.decode turns into "skipped, logged once" for the leader's view.
    with pytest.raises(ValueError):
        Group.from_json(raw)
