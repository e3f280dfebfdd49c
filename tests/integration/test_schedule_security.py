"""Signed schedules end to end: forged, altered and unsigned schedules and runs are refused.

What a compromised leader (or anyone with etcd write access) can do is write job records
and dispatch them: each run below is injected so, and the agent must refuse it, audit
it, and never start its command (the file the command would make is the evidence).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from apiclient import ApiClient
from forge import dispatch_assigned
from schedagent.core.model import JobSpec, new_job_id
from schedagent.core.schedule import Schedule, parse_definition
from schedagent.core.signing import SigningKey
from schedagent.ctl.exits import EXIT_ERROR, EXIT_NOT_FOUND
from schedagent.dev.cluster import LocalCluster, harness_key
from schedagent.etcd.store import Store
from schedhelp import action, create

STRANGER = SigningKey.generate()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(2, base_dir=tmp_path_factory.mktemp("schedsec")) as local:
        yield local


async def paused_schedule(api: ApiClient, name: str, cmd: str) -> Schedule:
    """A genuine schedule that fires nothing itself (paused): runs come only from the test."""
    record = await create(api, name, cmd, every=60)
    await action(api, "pause", name)
    return Schedule.from_dict(record)


def next_slot(schedule: Schedule) -> int:
    return schedule.definition.slots().next_after(int(time.time()))


def forged_runs(good: Schedule, pwned: Path) -> dict[str, tuple[str, JobSpec, str]]:
    """name -> (job id, spec, the reason it must be refused with)."""
    slot = next_slot(good)
    genuine = good.slot_spec(slot)
    evil = f"touch {pwned}"
    altered_definition = dataclasses.replace(
        good.definition, job={**good.definition.job, "cmd": evil}
    )
    altered = dataclasses.replace(good, definition=altered_definition)
    definition = parse_definition({"name": good.name, "every": 60, "job": {"cmd": evil}})
    stranger = Schedule(definition, STRANGER.sign_schedule(definition.to_dict()))
    origin = dict(genuine.schedule or {})
    return {
        "cmd-altered": (
            good.slot_job_id(slot),
            msgspec.structs.replace(genuine, cmd=evil),
            "the run's job is not",
        ),
        "definition-altered": (good.slot_job_id(slot), altered.slot_spec(slot), "signature by"),
        "unknown-key": (good.slot_job_id(slot), stranger.slot_spec(slot), "signed by unknown key"),
        "unsigned": (
            good.slot_job_id(slot),
            msgspec.structs.replace(genuine, schedule={**origin, "signature": None}),
            "the run's schedule is malformed",
        ),
        "not-a-slot": (good.slot_job_id(slot + 1), good.slot_spec(slot + 1), "is not a slot"),
        "other-id": (new_job_id(), genuine, "is not the run of slot"),
        "no-run-request": (new_job_id(), good.slot_spec(None), "a run outside the schedule"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "cmd-altered",
        "definition-altered",
        "unknown-key",
        "unsigned",
        "not-a-slot",
        "other-id",
        "no-run-request",
    ],
)
async def test_forged_runs_are_refused_by_the_agent_and_audited(
    api: ApiClient, store: Store, cluster: LocalCluster, tmp_path: Path, case: str
) -> None:
    pwned = tmp_path / "pwned"
    good = await paused_schedule(api, f"sec-{case}", f"touch {tmp_path / 'ran'}")
    job_id, spec, why = forged_runs(good, pwned)[case]
    await dispatch_assigned(store, api, job_id, spec)
    job = await api.wait_for(job_id, deadline=20)
    assert job["state"] == "FAILED" and job["reason"].startswith("signature rejected"), job
    assert why in job["reason"], job["reason"]
    assert job["attempts"][0]["started_at"] is None
    assert not pwned.exists() and not (tmp_path / "ran").exists()
    assert f"audit refused job {job_id}" in cluster.agents["node1"].log_tail(400)


async def test_schedules_and_their_actions_must_be_signed(
    api: ApiClient, cluster: LocalCluster, tmp_path: Path
) -> None:
    definition = parse_definition({"name": "unsigned", "every": 60, "job": {"cmd": "true"}})
    raw = definition.to_dict()
    cases = {
        "unknown key": STRANGER.sign_schedule(raw).to_dict(),
        "does not match": api.key.sign_schedule({**raw, "every": 1}).to_dict(),
    }
    for why, signature in cases.items():
        body = {"definition": raw, "signature": signature}
        reply = await api.raw("schedule_create", json.dumps({"v": 1, "schedule": body}).encode())
        assert reply["ok"] is False and why in reply["error"], reply
    reply = await api.raw(
        "schedule_create", json.dumps({"v": 1, "schedule": {"definition": raw}}).encode()
    )
    assert reply["ok"] is False and "signature" in reply["error"], reply
    ran = tmp_path / "ran"
    record = await create(api, "actions", f"touch {ran}", every=3600)
    value = record["signature"]["value"]
    forged = STRANGER.sign_schedule_action("pause", "actions", value).to_dict()
    other = api.key.sign_schedule_action("pause", "another", value).to_dict()
    for signature in (None, forged, other):
        body = json.dumps({"v": 1, "name": "actions", "signature": signature}).encode()
        reply = await api.raw("schedule_pause", body)
        assert reply["ok"] is False and "signature rejected" in reply["error"], reply
    # A genuine pause, then its replay after a resume: stale, refused.
    pause = api.key.sign_schedule_action("pause", "actions", value).to_dict()
    await api.call("schedule_pause", name="actions", signature=pause)
    await action(api, "resume", "actions")
    reply = await api.raw(
        "schedule_pause", json.dumps({"v": 1, "name": "actions", "signature": pause}).encode()
    )
    assert reply["ok"] is False and "before the last pause or resume" in reply["error"], reply
    assert (await api.call("schedule_get", name="actions"))["schedule"]["paused"] is False
    # A run now, signed: it runs; sent again (a retry), it is the same job.
    run = api.key.sign_schedule_action("run", "actions", value).to_dict()
    first = await api.call("schedule_run", name="actions", signature=run)
    again = await api.call("schedule_run", name="actions", signature=run)
    assert first["job"]["id"] == again["job"]["id"] and again["created"] is False
    job = await api.wait_for(first["job"]["id"], deadline=20)
    assert job["state"] == "SUCCEEDED" and ran.exists(), job
    logs = "".join(agent.log_tail(600) for agent in cluster.agents.values())
    refused = f"audit schedule-pause schedule actions key {STRANGER.key_id}: signature rejected"
    assert refused in logs
    assert "audit schedule-create schedule unsigned key" in logs
    assert f"audit schedule-run schedule actions key {api.key.key_id}: job {job['id']}" in logs


def schedctl(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from schedagent.ctl.main import main; main()"]
    base = ["--nats", cluster.nats_url, "--key", str(harness_key()[1]), "--timeout", "5"]
    return subprocess.run([*command, *base, *args], capture_output=True, text=True, timeout=60)


async def test_schedctl_drives_a_schedule(
    api: ApiClient, cluster: LocalCluster, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    create_args = ["schedule", "create", "ctl", "--cron", "@yearly", "--tz", "Europe/Berlin"]
    made = await asyncio.to_thread(
        schedctl, cluster, *create_args, "--cmd", f"echo x >> {ran}", "--splay", "1m", "--json"
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["schedule"]["definition"]["splay"] == 60.0
    again = await asyncio.to_thread(schedctl, cluster, *create_args, "--cmd", "true")
    assert again.returncode == EXIT_ERROR and "exists" in again.stderr
    listed = await asyncio.to_thread(schedctl, cluster, "schedule", "list")
    assert "ctl" in listed.stdout and "@yearly (Europe/Berlin)" in listed.stdout
    job_id = (await asyncio.to_thread(schedctl, cluster, "schedule", "run", "ctl")).stdout.strip()
    assert (await api.wait_for(job_id, deadline=20))["state"] == "SUCCEEDED"
    assert ran.read_text() == "x\n"
    for verb in ("pause", "resume"):
        done = await asyncio.to_thread(schedctl, cluster, "schedule", verb, "ctl")
        assert done.returncode == 0 and f"schedule ctl {verb}d" in done.stdout, done.stderr
    shown = await asyncio.to_thread(schedctl, cluster, "schedule", "show", "ctl", "--json")
    assert json.loads(shown.stdout)["schedule"]["paused"] is False
    assert (
        "next slot"
        in (await asyncio.to_thread(schedctl, cluster, "schedule", "show", "ctl")).stdout
    )
    gone = await asyncio.to_thread(schedctl, cluster, "schedule", "delete", "ctl")
    assert gone.returncode == 0
    missing = await asyncio.to_thread(schedctl, cluster, "schedule", "show", "ctl")
    assert missing.returncode == EXIT_NOT_FOUND and "no schedule ctl" in missing.stderr
