"""What schedctl shows of a fleet run: output as `host: line`, the per-host table, the summary."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence

from schedagent.core import rollout
from schedagent.ctl.client import Client, Record, field
from schedagent.ctl.exits import EXIT_HOSTS_FAILED, EXIT_HOSTS_MISSED
from schedagent.ctl.follow import JobFollower
from schedagent.ctl.format import table, text, when

POLL = 1.0


def exit_status(counts: Mapping[str, int]) -> int:
    """0 only if every host succeeded."""
    if any(counts.get(r) for r in ("failed", "canceled")):
        return EXIT_HOSTS_FAILED
    if any(n for r, n in counts.items() if r != "succeeded"):
        return EXIT_HOSTS_MISSED
    return 0


class HostLines:
    """Writes one host's output chunks as whole lines, each `host: line`; stdout to
    stdout, stderr to stderr. A last line without a newline is written at the end."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.partial = {"stdout": "", "stderr": ""}

    def write(self, stream: str, data: str) -> None:
        key = "stderr" if stream == "stderr" else "stdout"
        *lines, self.partial[key] = (self.partial[key] + data).split("\n")
        for line in lines:
            self._emit(key, line)

    def flush(self) -> None:
        for key, rest in self.partial.items():
            if rest:
                self._emit(key, rest)
            self.partial[key] = ""

    def _emit(self, key: str, line: str) -> None:
        out = sys.stderr if key == "stderr" else sys.stdout
        out.write(f"{self.host}: {line}\n")
        out.flush()


async def follow_group(client: Client, group_id: str) -> Record:
    """Stream every part's output until the group has ended; its final fleet_get reply."""
    followers: dict[str, asyncio.Task[Record]] = {}
    try:
        while True:
            reply = await client.call("fleet_get", {"id": group_id})
            for row in field(reply, "hosts", list):
                job = row.get("job")
                if isinstance(job, str) and row.get("attempts") and job not in followers:
                    followers[job] = asyncio.create_task(_follow(client, job, str(row["host"])))
            if field(reply, "group", dict).get("done"):
                await asyncio.gather(*followers.values())
                return dict(await client.call("fleet_get", {"id": group_id}))
            await asyncio.sleep(POLL)
    finally:
        for task in followers.values():
            task.cancel()
        await asyncio.gather(*followers.values(), return_exceptions=True)


async def _follow(client: Client, job_id: str, host: str) -> Record:
    lines = HostLines(host)
    try:
        return await JobFollower(client, job_id, lines.write).run()
    finally:
        lines.flush()


def format_group(reply: Record) -> str:
    """The per-host table, then the summary line."""
    group = field(reply, "group", dict)
    hosts: Sequence[Record] = field(reply, "hosts", list)
    rows = [
        [
            text(h.get("host")),
            text(h.get("result")),
            text(h.get("state")),
            text(h.get("exit_code")),
            "-" if h.get("duration") is None else f"{h['duration']:.1f}s",
            text(h.get("last_line") or h.get("reason") or "-"),
        ]
        for h in hosts
    ]
    head = f"fleet run {group.get('id')}: {'ended' if group.get('done') else 'rolling out'}"
    if group.get("canceled"):
        head += " (canceled)"
    origin = group.get("schedule")
    if isinstance(origin, dict):  # a fleet schedule's slot
        head += f" (schedule {text(origin.get('name'))}, slot {when(origin.get('slot'))})"
    body = table(["HOST", "RESULT", "STATE", "EXIT", "DURATION", "LAST LINE"], rows)
    return f"{head}\n{body}\n{summary_line(reply)}"


def summary_line(reply: Record) -> str:
    counts = field(reply, "counts", dict)
    return rollout.summary({str(k): int(v) for k, v in counts.items()})
