"""Signed fleet runs end to end: forged or altered groups (a fleet schedule's slot groups
too), and parts for hosts outside the selector, are refused by the agent that would run
them, and audited.

What a compromised leader (or anyone with etcd write access) can do is write job records
and dispatch them (tests/forge.py): each part below is injected so, and the agent must
refuse it and never start its command (the file the command would make is the evidence).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apiclient import ApiClient
from fleethelp import signed_group
from forge import dispatch_assigned
from schedagent.core.fleet import Group, Target, part_job_id
from schedagent.core.model import JobSpec, new_job_id
from schedagent.core.schedfleet import slot_group
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SigningKey
from schedagent.dev.cluster import LocalCluster, harness_key
from schedagent.etcd.store import Store

STRANGER = SigningKey.generate()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(2, base_dir=tmp_path_factory.mktemp("fleetsec")) as local:
        yield local


def forged_parts(pwned: Path) -> dict[str, tuple[str, JobSpec, str]]:
    """name -> (job id, spec, the reason it must be refused with), each for node1."""
    evil = f"touch {pwned}"
    good = signed_group("true", {"all": True}, ["node1"])
    genuine = good.part_spec("node1")
    altered_job = {**good.definition.job, "cmd": evil}
    altered = dataclasses.replace(
        good, definition=dataclasses.replace(good.definition, job=altered_job)
    )
    stranger = signed_group(evil, {"all": True}, ["node1"], STRANGER)
    elsewhere = signed_group(evil, {"nodes": ["node2"]}, ["node2"])
    web = signed_group(evil, {"labels": {"role": "web"}}, ["node1"])
    return {
        "cmd-altered": (
            _id(good),
            msgspec.structs.replace(genuine, cmd=evil),
            "not the signed fleet run's job",
        ),
        "definition-altered": (_id(good), altered.part_spec("node1"), "does not match"),
        "unknown-key": (_id(stranger), stranger.part_spec("node1"), "signed by unknown key"),
        "outside-node-list": (_id(elsewhere), elsewhere.part_spec("node1"), "outside"),
        "outside-labels": (_id(web), web.part_spec("node1"), "outside"),
        "other-id": (new_job_id(), genuine, "is not the part of"),
    }


def _id(group: Group) -> str:
    return part_job_id(group.id, "node1")


@pytest.mark.parametrize(
    "case",
    [
        "cmd-altered",
        "definition-altered",
        "unknown-key",
        "outside-node-list",
        "outside-labels",
        "other-id",
    ],
)
async def test_forged_parts_are_refused_by_the_agent_and_audited(
    api: ApiClient, store: Store, cluster: LocalCluster, tmp_path: Path, case: str
) -> None:
    pwned = tmp_path / "pwned"
    await refused_unrun(api, store, cluster, *forged_parts(pwned)[case], pwned)


async def test_fleet_runs_must_be_signed_and_are_audited(
    api: ApiClient, cluster: LocalCluster, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    group = signed_group(f"touch {ran}", {"all": True}, [], STRANGER)
    body = {"definition": group.definition.to_dict(), "signature": group.signature.to_dict()}
    reply = await api.raw("fleet_create", json.dumps({"v": 1, "group": body}).encode())
    assert reply["ok"] is False and "unknown key" in reply["error"], reply
    genuine = signed_group(f"touch {ran}", {"all": True}, [])
    altered = {**genuine.definition.to_dict(), "selector": {"nodes": ["node2"]}}
    body = {"definition": altered, "signature": genuine.signature.to_dict()}
    reply = await api.raw("fleet_create", json.dumps({"v": 1, "group": body}).encode())
    assert reply["ok"] is False and "does not match" in reply["error"], reply
    cancel = STRANGER.sign_group_cancel(genuine.id).to_dict()
    body = {"v": 1, "id": genuine.id, "signature": cancel}
    reply = await api.raw("fleet_cancel", json.dumps(body).encode())
    assert reply["ok"] is False and "signature rejected" in reply["error"], reply
    assert not ran.exists()
    logs = "".join(agent.log_tail(600) for agent in cluster.agents.values())
    assert f"audit fleet-create group {group.id} key {STRANGER.key_id}: signature" in logs
    assert f"audit fleet-cancel group {genuine.id} key {STRANGER.key_id}: signature" in logs


def forged_slot_parts(pwned: Path) -> dict[str, tuple[str, JobSpec, str]]:
    """name -> (job id, spec, why refused): parts of a fleet schedule's slot group on
    node1 as a compromised leader might write them."""
    evil = f"touch {pwned}"
    schedule = _fleet_schedule("true", {"all": True})
    slot = int(time.time()) // 10 * 10  # a slot of `every 10` after the signing
    good = slot_group(schedule, slot, [Target("node1", True)], time.time())
    assert good.schedule is not None
    job = {**good.definition.job, "cmd": evil}
    group_altered = dataclasses.replace(
        good, definition=dataclasses.replace(good.definition, job=job)
    )
    definition = {**good.schedule["definition"], "job": {**good.schedule["definition"]["job"]}}
    definition["job"]["cmd"] = evil
    origin = {**good.schedule, "definition": definition}
    schedule_altered = dataclasses.replace(good, schedule=origin)
    not_a_slot = slot_group(schedule, slot + 1, good.targets, time.time())
    stranger = slot_group(_fleet_schedule(evil, {"all": True}, STRANGER), slot, good.targets, 0)
    elsewhere = slot_group(_fleet_schedule(evil, {"nodes": ["node2"]}), slot, good.targets, 0)
    return {
        name: (part_job_id(g.id, "node1"), g.part_spec("node1"), why)
        for name, g, why in (
            ("group-altered", group_altered, "fleet run of slot"),
            ("schedule-altered", schedule_altered, "does not match"),
            ("not-a-slot", not_a_slot, "is not a slot of schedule"),
            ("unknown-key", stranger, "signed by unknown key"),
            ("outside-selector", elsewhere, "outside"),
        )
    }


def _fleet_schedule(cmd: str, selector: dict[str, Any], key: SigningKey | None = None) -> Schedule:
    raw = {"name": "patch", "every": 10, "job": {"cmd": cmd}}
    definition = parse_definition({**raw, "fleet": {"selector": selector, "policy": {}}})
    signature = (key or harness_key()[0]).sign_schedule(definition.to_dict(), now=time.time() - 25)
    return Schedule(definition, signature)


@pytest.mark.parametrize(
    "case", ["group-altered", "schedule-altered", "not-a-slot", "unknown-key", "outside-selector"]
)
async def test_forged_scheduled_fleet_parts_are_refused_and_audited(
    api: ApiClient, store: Store, cluster: LocalCluster, tmp_path: Path, case: str
) -> None:
    pwned = tmp_path / "pwned"
    await refused_unrun(api, store, cluster, *forged_slot_parts(pwned)[case], pwned)


async def refused_unrun(
    api: ApiClient,
    store: Store,
    cluster: LocalCluster,
    job_id: str,
    spec: JobSpec,
    why: str,
    pwned: Path,
) -> None:
    """Dispatch the forged part as a compromised leader would: refused, never started
    (the file its command would make is not there), and audited."""
    await dispatch_assigned(store, api, job_id, spec)
    job = await api.wait_for(job_id, deadline=20)
    assert job["state"] == "FAILED" and job["reason"].startswith("signature rejected"), job
    assert why in job["reason"], job["reason"]
    assert job["attempts"][0]["started_at"] is None
    assert not await asyncio.to_thread(pwned.exists)
    assert f"audit refused job {job_id}" in cluster.agents["node1"].log_tail(400)
