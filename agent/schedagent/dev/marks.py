"""Jobs that write marks of their own runs to a file, and those marks read back.

A test judges what ran from these marks, not from what the scheduler recorded: each
job appends `JOB ATTEMPT start|beat|end TIME` lines ($SCHED_JOB_ID, $SCHED_ATTEMPT).
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

BEAT = 0.2  # seconds between the heartbeats of a marked job


@dataclasses.dataclass
class Execution:
    """One run of one attempt, as the job itself saw it."""

    job: str
    attempt: int
    start: float
    last: float  # the time of its last mark: it ran at least until then
    ended: bool = False  # it wrote its end mark (it was not killed)
    starts: int = 1  # start marks for this attempt: more than one is a second run


def marked(cmd: str, path: Path | str, beat: bool = False) -> str:
    """cmd, wrapped to mark its start, its end and (with beat) a heartbeat meanwhile.

    The command runs in a subshell, so its `exit` still reaches the end mark and its
    exit status is the job's; `$$` is still the job's shell.
    """
    out = shlex.quote(str(path))
    lines = [
        f'm() {{ echo "$SCHED_JOB_ID $SCHED_ATTEMPT $1 $(date +%s.%N)" >> {out}; }}',
        "m start",
    ]
    if beat:
        lines.append(f"( while :; do sleep {BEAT}; m beat; done ) & beat=$!")
    lines += [f"( {cmd}\n)", "rc=$?"]
    if beat:
        lines.append("kill $beat")
    lines += ["m end", "exit $rc"]
    return "\n".join(lines)


def read(path: Path | str) -> dict[tuple[str, int], Execution]:
    """Every execution in a marks file, by (job id, attempt); a missing file has none."""
    runs: dict[tuple[str, int], Execution] = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return runs
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit():
            continue  # a line cut short by a kill mid-write
        try:
            when = float(parts[3])
        except ValueError:
            continue
        job, attempt, event = parts[0], int(parts[1]), parts[2]
        run = runs.get((job, attempt))
        if run is None:
            runs[(job, attempt)] = run = Execution(job, attempt, when, when)
        elif event == "start":
            run.starts += 1
        run.start, run.last = min(run.start, when), max(run.last, when)
        run.ended = run.ended or event == "end"
    return runs
