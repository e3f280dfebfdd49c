"""Slot computation: cron in real zones across DST (tzdata), --every, ids, splay."""

from __future__ import annotations

import datetime

import pytest

from schedagent.core.model import JOB_ID_RE
from schedagent.core.slots import Slots, cron_fields, slot_job_id, splay_delay, zone
from schedagent.errors import ScheduleError

NY = "America/New_York"
BERLIN = "Europe/Berlin"


def at(tz: str, *wall: int, fold: int = 0) -> int:
    return int(datetime.datetime(*wall, tzinfo=zone(tz), fold=fold).timestamp())  # type: ignore[misc]


def walls(slots: list[int], tz: str) -> list[str]:
    return [datetime.datetime.fromtimestamp(s, zone(tz)).strftime("%m-%d %H:%M%z") for s in slots]


def cron(expr: str, tz: str, start: int, n: int) -> list[str]:
    return walls(Slots(expr, tz, None).between(start, start + 10**8, n), tz)


def test_a_skipped_time_runs_once_at_the_transition() -> None:
    # 2026-03-08 02:00 EST does not exist in New York: clocks go to 03:00 EDT.
    assert cron("30 2 * * *", NY, at(NY, 2026, 3, 7), 3) == [
        "03-07 02:30-0500",
        "03-08 03:00-0400",
        "03-09 02:30-0400",
    ]
    # Every skipped time of the gap becomes the one transition instant: one slot.
    assert cron("*/20 * * * *", NY, at(NY, 2026, 3, 8, 1, 30), 4) == [
        "03-08 01:40-0500",
        "03-08 03:00-0400",
        "03-08 03:20-0400",
        "03-08 03:40-0400",
    ]
    assert cron("30 2 * * *", BERLIN, at(BERLIN, 2026, 3, 28), 2) == [
        "03-28 02:30+0100",
        "03-29 03:00+0200",
    ]


def test_a_repeated_time_runs_once_its_first_occurrence() -> None:
    # 2026-11-01 01:00-02:00 happens twice in New York (EDT, then EST).
    assert cron("30 1 * * *", NY, at(NY, 2026, 10, 31), 3) == [
        "10-31 01:30-0400",
        "11-01 01:30-0400",
        "11-02 01:30-0500",
    ]
    # Every-15-minutes: the repeated hour is not run a second time.
    assert cron("*/30 * * * *", NY, at(NY, 2026, 11, 1, 0, 30), 4) == [
        "11-01 01:00-0400",
        "11-01 01:30-0400",
        "11-01 02:00-0500",
        "11-01 02:30-0500",
    ]
    assert cron("0 2 * * *", BERLIN, at(BERLIN, 2026, 10, 24), 3)[1] == "10-25 02:00+0200"


def test_a_slot_inside_the_repeated_hour_second_time_is_not_a_slot() -> None:
    slots = Slots("30 1 * * *", NY, None)
    assert slots.is_slot(at(NY, 2026, 11, 1, 1, 30, fold=0))
    assert not slots.is_slot(at(NY, 2026, 11, 1, 1, 30, fold=1))
    spring = Slots("30 2 * * *", NY, None)
    assert spring.is_slot(at(NY, 2026, 3, 8, 3, 0))  # the transition stands for 02:30
    assert not spring.is_slot(at(NY, 2026, 3, 8, 3, 30))


def test_latest_at_or_before_agrees_with_after() -> None:
    for expr, tz in (("30 2 * * *", NY), ("*/20 * * * *", NY), ("0 0 1 * *", BERLIN)):
        slots = Slots(expr, tz, None)
        for start in (at(NY, 2026, 3, 8, 2, 10), at(NY, 2026, 11, 1, 1, 45, fold=1)):
            nxt = slots.next_after(start)
            assert slots.latest_at_or_before(nxt) == nxt
            assert slots.latest_at_or_before(nxt - 1) is not None
            assert slots.next_after(slots.latest_at_or_before(nxt - 1) or 0) == nxt


def test_macros_and_utc_default() -> None:
    assert cron_fields("@daily") == "0 0 * * *"
    assert cron_fields("@HOURLY") == "0 * * * *"
    start = at("UTC", 2026, 1, 1, 0, 30)
    assert cron("@hourly", "UTC", start, 2) == ["01-01 01:00+0000", "01-01 02:00+0000"]
    assert cron("@weekly", "UTC", start, 1) == ["01-04 00:00+0000"]  # a Sunday


def test_every_is_aligned_to_the_epoch() -> None:
    slots = Slots(None, "UTC", 7)
    assert slots.between(100, 130, 10) == [105, 112, 119, 126]
    assert slots.latest_at_or_before(111) == 105
    assert slots.is_slot(112) and not slots.is_slot(113)


@pytest.mark.parametrize(
    ("expr", "tz", "why"),
    [
        ("* * * *", "UTC", "5 fields"),
        ("0 0 * * * *", "UTC", "5 fields"),  # cronsim's seconds field: not cron
        ("61 * * * *", "UTC", "bad cron"),
        ("@reboot", "UTC", "5 fields"),
        ("0 0 * * *", "Mars/Olympus", "unknown time zone"),
        ("0 0 * * *", "../etc/passwd", "unknown time zone"),
    ],
)
def test_bad_cron_or_zone_says_why(expr: str, tz: str, why: str) -> None:
    with pytest.raises(ScheduleError, match=why):
        Slots(expr, tz, None)


def test_job_ids_and_splay_are_derived_from_schedule_and_slot() -> None:
    a, b = slot_job_id("backup", 1_800_000_000), slot_job_id("backup", 1_800_000_060)
    assert JOB_ID_RE.match(a) and a == slot_job_id("backup", 1_800_000_000)
    assert a < b  # ids sort by slot time, as retention expects
    assert a != slot_job_id("backup2", 1_800_000_000)
    assert int(a[:12], 16) == 1_800_000_000_000 & 0xFFFFFFFFFFFF
    delays = [splay_delay("backup", 1_800_000_000 + i * 60, 30.0) for i in range(200)]
    assert all(0 <= d < 30 for d in delays) and len(set(delays)) > 150
    assert delays[0] == splay_delay("backup", 1_800_000_000, 30.0)
    assert splay_delay("backup", 1, 0.0) == 0.0
