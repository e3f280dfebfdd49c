"""The guard timer: what is sent to systemd, and when it is due."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from dbusfake import SystemdFake
from schedagent.core import fencing
from schedagent.errors import ContainmentError
from schedagent.host import guard
from schedagent.host.systemd_bus import SystemdBus


def unwrapped(properties: list[tuple[str, Variant]]) -> dict[str, tuple[str, object]]:
    return {name: (value.signature, value.value) for name, value in properties}


async def test_arming_starts_the_timer_with_its_service_in_one_call() -> None:
    fake = SystemdFake()
    await guard.arm_guard(SystemdBus(fake), 4.25)  # type: ignore[arg-type]
    [(_, body)] = fake.calls("StartTransientUnit")
    name, mode, timer, aux = body
    assert (name, mode) == ("schedagent-guard.timer", "fail")
    assert unwrapped(timer) == {
        "Description": ("s", "schedagent: stops the jobs a restarting agent left"),
        "TimersMonotonic": ("a(st)", [("OnActiveSec", 4_250_000)]),
        "AccuracyUSec": ("t", 1000),
        "RemainAfterElapse": ("b", False),
    }
    [(service, properties)] = aux
    assert service == "schedagent-guard.service"
    assert unwrapped(properties) == {
        "Description": ("s", "schedagent: stop the jobs no agent took over"),
        "Type": ("s", "oneshot"),
        "ExecStart": (
            "a(sasb)",
            [("/bin/systemctl", ["systemctl", "stop", "schedagent-jobs.slice"], False)],
        ),
    }


async def test_a_start_without_aux_units_sends_an_empty_list_as_before() -> None:
    fake = SystemdFake()
    await SystemdBus(fake).start_transient("a.slice", [("MemoryAccounting", "b", True)])  # type: ignore[arg-type]
    [(_, body)] = fake.calls("StartTransientUnit")
    assert body[0] == "a.slice" and body[3] == []


async def test_a_refused_guard_is_an_error() -> None:
    # The caller must not hand the jobs over unguarded: it drains instead.
    fake = SystemdFake()
    fake.refuse["StartTransientUnit"] = "org.freedesktop.systemd1.UnitExists"
    with pytest.raises(ContainmentError, match="UnitExists"):
        await guard.arm_guard(SystemdBus(fake), 4.0)  # type: ignore[arg-type]


async def test_disarming_stops_the_timer_then_its_service_gone_or_not() -> None:
    armed = SystemdFake(loaded={"schedagent-guard.timer", "schedagent-guard.service"})
    await guard.disarm_guard(SystemdBus(armed))  # type: ignore[arg-type]
    assert armed.calls("StopUnit") == [
        ("StopUnit", ["schedagent-guard.timer", "replace"]),
        ("StopUnit", ["schedagent-guard.service", "replace"]),
    ]
    elapsed = SystemdFake()  # already fired and gone: systemd knows neither
    await guard.disarm_guard(SystemdBus(elapsed))  # type: ignore[arg-type]
    assert len(elapsed.calls("StopUnit")) == 2


def test_the_guard_is_due_before_the_fences_deadline_by_its_kill() -> None:
    ttl = 10
    # The fence: SIGTERM at 9.4 s after the refresh, gone 1.2 s after.
    assert fencing.deadline_after(ttl) == pytest.approx(9.4)
    assert guard.guard_delay(100.0, 100.0, ttl) == pytest.approx(8.2)
    assert guard.guard_delay(100.0, 103.0, ttl) == pytest.approx(5.2)
    assert guard.guard_delay(100.0, 108.2, ttl) == pytest.approx(0.0)
    assert guard.guard_delay(100.0, 130.0, ttl) == 0.0  # late: at once, never negative
    assert guard.guard_delay(0.0, 0.0, 2) == pytest.approx(0.28)  # etcd's least TTL
