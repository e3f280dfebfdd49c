"""What systemd is doing to the agent's unit at SIGTERM: restart or stop (over a faked bus)."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from dbusfake import SystemdFake
from schedagent.errors import ContainmentError
from schedagent.host.systemd_bus import SystemdBus, UnitGone, is_restart

UNIT = "schedagent.service"
JOB_PATH = "/org/freedesktop/systemd1/job/1234"


def with_job(job_id: int, job_type: str | None) -> SystemdFake:
    fake = SystemdFake(loaded={UNIT})
    path = fake.unit_path(UNIT)
    job = (job_id, JOB_PATH if job_id else "/")
    fake.properties[(path, "org.freedesktop.systemd1.Unit", "Job")] = Variant("(uo)", job)
    if job_type is not None:
        key = (JOB_PATH, "org.freedesktop.systemd1.Job", "JobType")
        fake.properties[key] = Variant("s", job_type)
    return fake


@pytest.mark.parametrize("job_type", ["restart", "stop", "try-restart"])
async def test_the_job_on_the_unit_is_read_through_its_object(job_type: str) -> None:
    fake = with_job(1234, job_type)
    assert await SystemdBus(fake).pending_job_type(UNIT) == job_type  # type: ignore[arg-type]
    get_unit, job, kind = fake.sent
    assert (get_unit.member, get_unit.body) == ("GetUnit", [UNIT])
    assert (job.path, job.interface, job.member) == (
        fake.unit_path(UNIT),
        "org.freedesktop.DBus.Properties",
        "Get",
    )
    assert job.body == ["org.freedesktop.systemd1.Unit", "Job"]
    assert (kind.path, kind.body) == (JOB_PATH, ["org.freedesktop.systemd1.Job", "JobType"])
    assert all(m.destination == "org.freedesktop.systemd1" for m in fake.sent)


async def test_no_job_no_unit_or_a_job_just_finished_is_none() -> None:
    idle = with_job(0, None)  # a SIGTERM sent by hand: systemd has no job on the unit
    assert await SystemdBus(idle).pending_job_type(UNIT) is None  # type: ignore[arg-type]
    assert len(idle.sent) == 2  # no job object asked for
    unloaded = SystemdFake()
    assert await SystemdBus(unloaded).pending_job_type(UNIT) is None  # type: ignore[arg-type]
    finished = with_job(1234, None)  # its object gone between the two reads
    assert await SystemdBus(finished).pending_job_type(UNIT) is None  # type: ignore[arg-type]


async def test_a_bus_that_refuses_is_an_error_not_a_stop() -> None:
    # The caller decides what a refusal means (it drains: today's stop).
    fake = with_job(1234, "restart")
    fake.refuse["Get"] = "org.freedesktop.DBus.Error.AccessDenied"
    with pytest.raises(ContainmentError, match="AccessDenied") as raised:
        await SystemdBus(fake).pending_job_type(UNIT)  # type: ignore[arg-type]
    assert not isinstance(raised.value, UnitGone)


@pytest.mark.parametrize(
    ("job_type", "restart"),
    [
        ("restart", True),
        ("try-restart", True),
        ("stop", False),
        ("start", False),
        ("reload", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_restart_is_a_restart(job_type: str | None, restart: bool) -> None:
    assert is_restart(job_type) is restart
