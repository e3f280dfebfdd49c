"""The console's forms read into what the cluster takes: a job spec, a jobs filter."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping

from schedagent.core.model import JobState
from schedagent.core.sizes import memory_limit
from schedagent.core.spec import parse_spec
from schedagent.ctl.client import Record
from schedagent.errors import SpecError

PAGE_SIZE = 50
# A filter on node or text is applied to the records a page reads; one page reads at
# most this many before it stops and offers "older".
SCAN_LIMIT = 500

SUBMIT_FIELDS = ("cmd", "cpus", "timeout", "retries", "node", "labels", "env", "cwd", "memory")


class FormError(SpecError):
    """A form field the console cannot use; the form is shown again with the message."""


def _pairs(text: str, name: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise FormError(f"{name}: expected KEY=VALUE lines, got {line.strip()!r}")
        out[key.strip()] = value.strip()
    return out


def _number(text: str, name: str) -> float | None:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise FormError(f"{name} must be a number, got {text.strip()!r}") from None


def _whole(text: str, name: str) -> int:
    if not text.strip():
        return 0
    try:
        return int(text)
    except ValueError:
        raise FormError(f"{name} must be a whole number, got {text.strip()!r}") from None


def _text(form: Mapping[str, str], name: str) -> str | None:
    value = form.get(name, "").strip()
    return value or None


def spec_from_form(form: Mapping[str, str]) -> Record:
    """The job spec a submit form describes, checked as an agent checks it."""
    cpus = _number(form.get("cpus", ""), "cpus")
    spec: Record = {
        "cmd": form.get("cmd", "").replace("\r\n", "\n"),
        "cpus": 1.0 if cpus is None else cpus,
        "timeout": _number(form.get("timeout", ""), "timeout"),
        "retries": _whole(form.get("retries", ""), "retries"),
        "node": _text(form, "node"),
        "labels": _pairs(form.get("labels", ""), "labels"),
        "env": _pairs(form.get("env", ""), "env"),
        "cwd": _text(form, "cwd"),
        # One key per rendered form: sending the same form twice makes one job.
        "idempotency_key": _text(form, "idempotency_key") or str(uuid.uuid4()),
    }
    memory = _text(form, "memory")
    if memory is not None:
        try:
            spec["memory"] = memory_limit(memory)
        except ValueError as exc:
            raise FormError(f"memory: {exc}") from None
    parse_spec(spec)  # raises SpecError with the agents' own wording
    return spec


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """The jobs page's query: state (the API filters), node and text (the console does)."""

    state: str | None = None
    node: str = ""
    text: str = ""
    before: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> JobFilter:
        state = query.get("state", "").upper() or None
        if state is not None and state not in JobState.__members__:
            raise FormError(f"state must be one of {', '.join(JobState.__members__)}")
        before = query.get("before") or None
        return cls(state, query.get("node", "").strip(), query.get("q", "").strip(), before)

    def matches(self, job: Record) -> bool:
        if self.node and job.get("node") != self.node:
            spec_node = (job.get("spec") or {}).get("node")
            if spec_node != self.node:
                return False
        if not self.text:
            return True
        cmd = str((job.get("spec") or {}).get("cmd") or "")
        needle = self.text.lower()
        return needle in cmd.lower() or needle in str(job.get("id"))

    def query(self, before: str | None) -> dict[str, str]:
        """The query string of this filter's page that continues at `before`."""
        out = {"state": self.state or "", "node": self.node, "q": self.text}
        if before:
            out["before"] = before
        return {k: v for k, v in out.items() if v}
