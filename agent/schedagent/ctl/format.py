"""Human-readable renderings of schedctl replies: plain aligned text tables."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from schedagent.core import rollout, tail
from schedagent.core.model import FINAL_STATES

Record = Mapping[str, Any]

CMD_WIDTH = 40


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def when(ts: object) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool) or ts <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def size(n: object) -> str:
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def used(usage: object) -> str:
    """An attempt's usage from its cgroup: "cpu 1.25s mem 64.0M io 1.0M/0B" (read/written)."""
    if not isinstance(usage, Mapping) or not usage:
        return "-"
    parts = []
    cpu = usage.get("cpu_seconds")
    if isinstance(cpu, int | float) and not isinstance(cpu, bool):
        parts.append(f"cpu {cpu:.2f}s")
    if "memory_peak" in usage:
        parts.append(f"mem {size(usage['memory_peak'])}")
    if "io_read_bytes" in usage or "io_write_bytes" in usage:
        parts.append(f"io {size(usage.get('io_read_bytes'))}/{size(usage.get('io_write_bytes'))}")
    return " ".join(parts) or "-"


def pairs(mapping: object) -> str:
    if not isinstance(mapping, Mapping) or not mapping:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(mapping.items()))


def short(cmd: object, width: int = CMD_WIDTH) -> str:
    one_line = " ".join(str(cmd or "").split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _attempts(job: Record) -> str:
    rows = [
        [
            text(a.get("n")),
            text(a.get("node")),
            text(a.get("state")),
            text(a.get("exit_code")),
            text(a.get("signal")),
            when(a.get("started_at")),
            when(a.get("ended_at")),
            used(a.get("usage")),
            text(a.get("reason")),
        ]
        for a in job.get("attempts") or []
        if isinstance(a, Mapping)
    ]
    headers = ["ATTEMPT", "NODE", "STATE", "EXIT", "SIGNAL", "STARTED", "ENDED", "USED", "REASON"]
    return table(headers, rows) if rows else "no attempts yet"


def format_status(job: Record, pending_reason: object = None) -> str:
    spec = job.get("spec") or {}
    retries = spec.get("retries", 0) if isinstance(spec, Mapping) else 0
    cmd = spec.get("cmd") if isinstance(spec, Mapping) else None
    state = text(job.get("state"))
    if job.get("cancel_requested") and state not in FINAL_STATES:
        state += " (cancel requested)"
    fields = [
        ("id", text(job.get("id"))),
        ("state", state),
        ("cmd", text(cmd)),
        ("node", text(job.get("node"))),
        ("attempt", f"{text(job.get('attempt'))} (retries allowed: {text(retries)})"),
        ("exit code", text(job.get("exit_code"))),
        ("reason", text(job.get("reason"))),
        ("submitted", when(job.get("submitted_at"))),
        ("updated", when(job.get("updated_at"))),
    ]
    after = spec.get("after") if isinstance(spec, Mapping) else None
    if after:
        fields.insert(3, ("after", ", ".join(map(str, after))))
    limits = _limits(spec) if isinstance(spec, Mapping) else ""
    if limits:
        fields.insert(3, ("limits", limits))
    lines = [f"{name + ':':<11}{value}" for name, value in fields]
    if pending_reason:
        lines.append(f"pending: {pending_reason}")
    if job.get("state") == "PENDING":
        lines.append(
            f"(each node and why it cannot take it: schedctl explain {text(job.get('id'))})"
        )
    lines += ["", _attempts(job), *_output_tail(job)]
    return "\n".join(lines)


def _output_tail(job: Record) -> list[str]:
    if not tail.is_text(job):
        size = len(tail.output_bytes(job))
        return ["", f"output tail: {size} bytes, not UTF-8 text (`schedctl logs` writes them)"]
    text = job.get("output_tail") or ""
    return ["", "output tail:", str(text).rstrip("\n")] if text else []


def format_jobs(jobs: Sequence[Record]) -> str:
    rows = [
        [
            text(j.get("id")),
            text(j.get("state")),
            text(j.get("node")),
            text(j.get("attempt")),
            text(j.get("exit_code")),
            when(j.get("submitted_at")),
            _after((j.get("spec") or {}).get("after")),
            short((j.get("spec") or {}).get("cmd")),
        ]
        for j in jobs
    ]
    return table(["ID", "STATE", "NODE", "ATTEMPT", "EXIT", "SUBMITTED", "AFTER", "CMD"], rows)


def _limits(spec: Record) -> str:
    parts = [f"cpus {text(spec.get('cpus'))}"]
    if spec.get("memory") is not None:
        parts.append(f"memory {size(spec['memory'])}")
    if spec.get("tasks") is not None:
        parts.append(f"tasks {text(spec['tasks'])}")
    return ", ".join(parts) if len(parts) > 1 else ""


def _after(after: object) -> str:
    """The parents a job waits for: the first one's id, and how many more."""
    if not isinstance(after, Sequence) or isinstance(after, str) or not after:
        return "-"
    more = f" +{len(after) - 1}" if len(after) > 1 else ""
    return f"{after[0]}{more}"


def _load(load: object) -> str:
    if not isinstance(load, Sequence) or isinstance(load, str) or not load:
        return "-"
    return " ".join(f"{x:.2f}" if isinstance(x, int | float) else "?" for x in load)


def format_nodes(nodes: Sequence[Record], cordons: Sequence[Record] | None = None) -> str:
    rows = [
        [
            text(n.get("name")) + (" *" if n.get("leader") else ""),
            text(n.get("cpus")),
            text(n.get("used_cpus")),
            text(n.get("running_jobs")),
            f"{size(n.get('memory_available'))}/{size(n.get('memory_total'))}",
            _load(n.get("load")),
            pairs(n.get("labels")),
            _scheduling(n),
        ]
        for n in nodes
    ]
    headers = ["NAME", "CPUS", "USED", "RUNNING", "MEM FREE/TOTAL", "LOAD", "LABELS", "SCHEDULING"]
    shown = table(headers, rows) + "\n(* = leader)" * bool(rows)
    absent = [text(c.get("node")) + f" ({_cordon_state(c)})" for c in cordons or []]
    return shown + "".join(f"\nnot registered now: {line}" for line in absent)


def format_cordon(action: str, name: str, reply: Record) -> str:
    cordon = reply.get("cordon")
    if action == "forget":
        return f"node {name} forgotten: fleet runs no longer name it"
    if action == "uncordon" or not isinstance(cordon, dict):
        return f"node {name} takes new jobs again"
    return f"node {name} {_cordon_state(cordon)}"


def cordons_of(reply: Record) -> list[Record]:
    """The `nodes` reply's cordons of nodes not registered now ([] from an older agent)."""
    cordons = reply.get("cordons")
    return [c for c in cordons if isinstance(c, dict)] if isinstance(cordons, list) else []


def _scheduling(node: Record) -> str:
    """Whether the node takes new jobs: an operator's cordon first, then its own stop."""
    cordon = node.get("cordon")
    if isinstance(cordon, dict):
        return _cordon_state(cordon)
    return "stopping" if node.get("draining") else "ok"


def _cordon_state(cordon: Record) -> str:
    if not cordon.get("drain"):
        return "cordoned"
    deadline = cordon.get("deadline")
    if isinstance(deadline, int | float) and not isinstance(deadline, bool):
        return f"draining, jobs handed back at {_stamp(deadline)}"
    return "draining, jobs handed back after its drain_timeout"


def format_leader(leader: Record | None) -> str:
    if not leader:
        return "no leader"
    return f"{leader.get('node')} (fencing token {leader.get('token')})"


def format_cancel(job: Record) -> str:
    state = text(job.get("state"))
    if job.get("cancel_requested") and state not in FINAL_STATES:
        return f"{text(job.get('id'))}: cancel requested ({state})"
    return f"{text(job.get('id'))}: {state}"


def _when(schedule: Record) -> str:
    definition = schedule.get("definition") or {}
    if definition.get("every") is not None:
        return f"every {definition['every']}s"
    return f"{definition.get('cron')} ({definition.get('tz')})"


def _stamp(seconds: object) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def _hosts(definition: Record) -> str:
    """Where a schedule runs: a fleet schedule's selector, else a plain job's placement."""
    fleet = definition.get("fleet")
    job = definition.get("job") or {}
    if isinstance(fleet, dict):
        chosen = fleet.get("selector") or {}
        if chosen.get("all"):
            return "fleet: all"
        if chosen.get("nodes"):
            return "fleet: " + ",".join(map(str, chosen["nodes"]))
        return "fleet: " + ",".join(f"{k}={v}" for k, v in (chosen.get("labels") or {}).items())
    if job.get("node"):
        return f"node {job['node']}"
    labels = job.get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "any node"


def _rollout(definition: Record) -> str:
    policy = (definition.get("fleet") or {}).get("policy") or {}
    parallel, failures = policy.get("max_parallel"), policy.get("max_failures")
    return (
        f"max parallel {'all' if parallel is None else parallel}, max failures "
        f"{'default' if failures is None else failures}, batch wait "
        f"{policy.get('batch_wait')}s, canary {policy.get('canary')}, offline wait "
        f"{policy.get('offline_wait')}s"
    )


def _slot_line(entry: Record) -> str:
    """A fired slot: its job and state, or its fleet run and state (counts once done)."""
    if "group" in entry:
        counts = entry.get("counts")
        state = str(entry.get("state"))
        if isinstance(counts, dict):
            state += ": " + rollout.summary({str(k): int(v) for k, v in counts.items()})
        return f"  {_stamp(entry.get('slot'))}  fleet run {entry.get('group')}  {state}"
    return f"  {_stamp(entry.get('slot'))}  job {entry.get('job')}  {entry.get('state')}"


def format_schedules(schedules: Sequence[Record]) -> str:
    if not schedules:
        return "no schedules"
    rows = []
    for s in schedules:
        d = s.get("definition") or {}
        rows.append(
            [
                str(d.get("name")),
                _when(s),
                _hosts(d),
                "paused" if s.get("paused") else "active",
                str(d.get("concurrency")),
                str(d.get("catch_up")),
                str((d.get("job") or {}).get("cmd", ""))[:CMD_WIDTH],
            ]
        )
    return table(["NAME", "WHEN", "HOSTS", "STATE", "CONCURRENCY", "CATCH-UP", "COMMAND"], rows)


def format_schedule(reply: Record) -> str:
    """A schedule, then its recent slots: the job and its state, or why it was skipped."""
    s = reply.get("schedule") or {}
    d = s.get("definition") or {}
    lines = [
        f"schedule {d.get('name')}: {_when(s)}{'  (paused)' if s.get('paused') else ''}",
        f"  command      {(d.get('job') or {}).get('cmd')}",
        f"  concurrency  {d.get('concurrency')}, catch-up {d.get('catch_up')} within "
        f"{d.get('catch_up_window')}s, splay {d.get('splay')}s",
        f"  hosts        {_hosts(d)}",
        *([f"  roll-out     {_rollout(d)}"] if d.get("fleet") else []),
        f"  after        {', '.join(map(str, d.get('after') or [])) or '-'}",
        f"  signed by    {s.get('key_id')} at {_stamp(s.get('starts_at'))}",
        f"  last slot    {_stamp(reply.get('last_slot'))}",
        f"  next slot    {_stamp(reply.get('next_slot'))}",
        "recent slots (oldest first):",
    ]
    for entry in reply.get("recent") or []:
        if "job" in entry or "group" in entry:
            lines.append(_slot_line(entry))
            continue
        count = entry.get("count")
        span = f"{_stamp(entry.get('slot'))} .. {_stamp(entry.get('until'))}"
        counted = "" if count is None else f"{count} "
        lines.append(f"  {span}  {counted}skipped: {entry.get('skipped')}")
    return "\n".join(lines)
