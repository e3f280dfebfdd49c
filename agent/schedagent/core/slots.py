"""A schedule's slots: cron (5 fields, @macros) in an IANA zone, or --every aligned to the epoch.

A slot is an instant, in whole seconds since the epoch. Every leader computes the same
slots from the same definition, so a slot names one run across failovers.

Cron is read by cronsim over *wall-clock* times of the zone, and each wall-clock time
becomes one instant:

- a time the zone skips (spring forward) becomes the instant of the transition, so
  `30 2 * * *` runs once, at 03:00, on that day; several skipped times become the
  one transition instant, one slot;
- a time the zone repeats (fall back) becomes its first occurrence only, so
  `30 1 * * *` runs once, and `*/15 * * * *` does not run again in the repeated hour.

Zone data comes from the pinned `tzdata` package, not the host, so every agent of one
release computes the same slots even where hosts' /usr/share/zoneinfo differ.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.resources
import zoneinfo
from collections.abc import Iterator

from cronsim import CronSim, CronSimError

from schedagent.errors import ScheduleError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Wall-clock iteration starts this far before the instant asked about: a zone's offset
# never drops by more in one change (DST is 1 h; Lord Howe's 30 min; 2 h at most).
MARGIN = 3 * 3600
UTC = datetime.UTC


def cron_fields(expr: str) -> str:
    """The 5 cron fields of expr (a macro expanded); ScheduleError if it is not cron."""
    text = " ".join(expr.split())
    fields = MACROS.get(text.lower(), text)
    if len(fields.split()) != 5:
        raise ScheduleError(
            f"cron must be 5 fields (minute hour day month weekday) or one of "
            f"{', '.join(MACROS)}, got {expr!r}"
        )
    try:
        CronSim(fields, datetime.datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ScheduleError(f"bad cron expression {expr!r}: {exc}") from None
    return fields


@functools.lru_cache(maxsize=256)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone from the tzdata package; ScheduleError if there is no such zone."""
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ScheduleError(f"unknown time zone {name!r}")
    path = importlib.resources.files("tzdata.zoneinfo").joinpath(*name.split("/"))
    try:
        with path.open("rb") as data:
            return zoneinfo.ZoneInfo.from_file(data, key=name)
    except (OSError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r} (an IANA name, e.g. Europe/Berlin)"
        ) from None


def instant(wall: datetime.datetime, tz: zoneinfo.ZoneInfo) -> int:
    """The instant of a wall-clock time in tz: its first occurrence if repeated, the
    transition if skipped."""
    first = int(wall.replace(tzinfo=tz, fold=0).timestamp())
    if datetime.datetime.fromtimestamp(first, tz).replace(tzinfo=None) == wall:
        return first
    # Skipped: fold=1 reads it with the offset after the change, fold=0 before it; the
    # transition lies between, where the offset changes (found to the second).
    lo, hi = int(wall.replace(tzinfo=tz, fold=1).timestamp()), first
    after = _offset(hi, tz)
    while lo < hi:
        mid = (lo + hi) // 2
        if _offset(mid, tz) == after:
            hi = mid
        else:
            lo = mid + 1
    return hi


def _offset(at: int, tz: zoneinfo.ZoneInfo) -> datetime.timedelta | None:
    return datetime.datetime.fromtimestamp(at, tz).utcoffset()


class Slots:
    """The slots of one definition: `after(t)` iterates those later than t, in order."""

    def __init__(self, cron: str | None, tz: str, every: int | None) -> None:
        if (cron is None) == (every is None):
            raise ScheduleError("a schedule has either cron or every")
        self.every = every
        self.cron = None if cron is None else cron_fields(cron)
        self.tz = zone(tz)

    def after(self, t: int) -> Iterator[int]:
        """Every slot > t, earliest first (endless)."""
        if self.every is not None:
            slot = (t // self.every + 1) * self.every
            while True:
                yield slot
                slot += self.every
        assert self.cron is not None
        start = datetime.datetime.fromtimestamp(t - MARGIN, self.tz).replace(tzinfo=None)
        last = t
        for wall in CronSim(self.cron, start):
            slot = instant(wall, self.tz)
            if slot > last:  # skipped times share their transition: one slot
                last = slot
                yield slot

    def next_after(self, t: int) -> int:
        return next(self.after(t))

    def latest_at_or_before(self, t: int) -> int | None:
        """The last slot <= t (None if there is none in the year before t)."""
        if self.every is not None:
            return t // self.every * self.every
        assert self.cron is not None
        start = datetime.datetime.fromtimestamp(t + MARGIN, self.tz).replace(tzinfo=None)
        floor = t - 366 * 86400
        for wall in CronSim(self.cron, start, reverse=True):
            slot = instant(wall, self.tz)
            if slot <= t:
                return slot
            if slot < floor:
                break
        return None

    def is_slot(self, t: int) -> bool:
        return self.next_after(t - 1) == t

    def between(self, after: int, until: int, limit: int) -> list[int]:
        """The slots in (after, until], at most limit of them."""
        found: list[int] = []
        for slot in self.after(after):
            if slot > until or len(found) == limit:
                break
            found.append(slot)
        return found


def slot_job_id(schedule: str, slot: int) -> str:
    """The job id of a schedule's slot: the slot's millisecond clock (ids sort by time,
    retention relies on it) and 32 bits of a hash of (schedule, slot), so every leader,
    and a child schedule naming its parent's run of a slot, derives the same id."""
    digest = hashlib.sha256(f"schedule\0{schedule}\0{slot}".encode()).hexdigest()
    return f"{(slot * 1000) & 0xFFFFFFFFFFFF:012x}{digest[:8]}"


def splay_delay(schedule: str, slot: int, splay: float) -> float:
    """A delay in [0, splay) that is the same for one (schedule, slot) on every leader
    (as systemd's RandomizedDelaySec spreads timers, but reproducibly)."""
    if splay <= 0:
        return 0.0
    digest = hashlib.sha256(f"splay\0{schedule}\0{slot}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return round(fraction * splay, 3)
