"""The console's templates (Jinja2, autoescaped) and the filters they format records with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jinja2

from schedagent.ctl import format as fmt
from schedagent.ctl.fleetruns import run_summary, selector_text

# The pages in the navigation bar.
NAV = (
    ("/nodes", "Nodes"),
    ("/jobs", "Jobs"),
    ("/fleet", "Fleet"),
    ("/schedules", "Schedules"),
    ("/submit", "Submit"),
)


def _plain(format_value: Callable[[object], str]) -> Callable[[object], str]:
    """A ctl/format.py function as a filter: a field the record lacks reads as None."""

    def apply(value: object) -> str:
        return format_value(None if isinstance(value, jinja2.Undefined) else value)

    return apply


def _load(value: object) -> str:
    if not isinstance(value, list) or not value:
        return "-"
    return " ".join(f"{x:.2f}" if isinstance(x, int | float) else "?" for x in value)


def _schedule_when(schedule: Any) -> str:
    definition = schedule.get("definition") or {}
    if definition.get("every") is not None:
        return f"every {definition['every']}s"
    return f"{definition.get('cron')} ({definition.get('tz')})"


def _selector(selector: object) -> str:
    """Which hosts a fleet run targets, as `schedctl run` is told: all, labels or nodes."""
    if not isinstance(selector, dict):
        return "-"
    if selector.get("all"):
        return "every known host"
    if selector.get("labels"):
        return "labels " + fmt.pairs(selector["labels"])
    return "nodes " + ", ".join(map(str, selector.get("nodes") or []))


def _seconds(value: object) -> str:
    return f"{value:.1f}s" if isinstance(value, int | float) else "-"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("schedagent.ctl.ui", "templates"),
        # Everything from a record (commands, output, labels, reasons) is escaped.
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        text=_plain(fmt.text),
        when=_plain(fmt.when),
        size=_plain(fmt.size),
        used=_plain(fmt.used),
        pairs=_plain(fmt.pairs),
        short=_plain(lambda cmd: fmt.short(cmd, 80)),
        load=_plain(_load),
        schedule_when=_schedule_when,
        selector=_plain(_selector),
        seconds=_plain(_seconds),
        run_summary=run_summary,
        selector_short=_plain(selector_text),
    )
    env.globals["nav"] = NAV
    return env
