"""Marks that test jobs write about themselves, and what they prove about what really ran.

A job made by `job_command` appends `start`, then a `beat` every BEAT seconds, then
`end`, each with its job id, attempt and wall-clock time, to a file in its working
directory (each agent's own, so the file tells the node); `marked` wraps any command
the same way, into a file of the test's choosing. Overlap is judged from these marks,
never from the records the scheduler wrote: a killed attempt writes no `end`, and its
last beat is at most BEAT before it died (dev/invariants.py compares them with the
records).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

BEAT = 0.2
# A killed attempt died at most one beat (plus the fork of `date`) after its last mark.
PAD = BEAT + 0.1
KINDS = ("start", "beat", "end")
FILE = "marks"


@dataclasses.dataclass(frozen=True)
class Mark:
    kind: str
    job: str
    attempt: int
    at: float
    host: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
    """One attempt as its own marks show it: where, from when, until its last mark."""

    job: str
    attempt: int
    host: str
    start: float
    last: float
    ended: bool

    def until(self, pad: float = PAD) -> float:
        """The latest it can have been alive: its end mark, or its last beat plus pad."""
        return self.last if self.ended else self.last + pad


def job_command(seconds: float, path: str = FILE, beat: float = BEAT) -> str:
    """A shell command that runs about `seconds` and marks its start, beats and end."""
    beats = max(1, round(seconds / beat))
    target = shlex.quote(path)
    return (
        f'mark() {{ echo "$1 $SCHED_JOB_ID $SCHED_ATTEMPT $(date +%s.%N)" >> {target}; }}; '
        f"mark start; i=0; while [ $i -lt {beats} ]; do sleep {beat:g}; mark beat; "
        "i=$((i+1)); done; mark end"
    )


def marked(cmd: str, path: Path | str, beat: bool = False) -> str:
    """cmd, wrapped to mark its start, its end and (with beat) a heartbeat meanwhile.

    The command runs in a subshell, so its `exit` still reaches the end mark and its
    exit status is the job's; `$$` is still the job's shell.
    """
    target = shlex.quote(str(path))
    lines = [
        f'mark() {{ echo "$1 $SCHED_JOB_ID $SCHED_ATTEMPT $(date +%s.%N)" >> {target}; }}',
        "mark start",
    ]
    if beat:
        lines.append(f"( while :; do sleep {BEAT:g}; mark beat; done ) & beat=$!")
    lines += [f"( {cmd}\n)", "rc=$?"]
    if beat:
        lines.append("kill $beat")
    lines += ["mark end", "exit $rc"]
    return "\n".join(lines)


def parse(text: str, host: str = "") -> list[Mark]:
    """Every well-formed line; a line cut short (a job killed mid-write) is skipped."""
    marks = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 4 or fields[0] not in KINDS:
            continue
        try:
            marks.append(Mark(fields[0], fields[1], int(fields[2]), float(fields[3]), host))
        except ValueError:
            continue
    return marks


def read(files: Mapping[str, Path]) -> list[Mark]:
    """The marks of each host's file (host -> path); a missing file has none."""
    marks: list[Mark] = []
    for host, path in files.items():
        if path.exists():
            marks.extend(parse(path.read_text(errors="replace"), host))
    return marks


def read_file(path: Path | str, host: str = "") -> list[Mark]:
    """The marks in one file (a missing file has none)."""
    return read({host: Path(path)})


def runs(marks: Iterable[Mark]) -> list[Run]:
    """One Run per (job, attempt, host), ordered by start."""
    grouped: dict[tuple[str, int, str], list[Mark]] = collections.defaultdict(list)
    for mark in marks:
        grouped[(mark.job, mark.attempt, mark.host)].append(mark)
    found = []
    for (job, attempt, host), group in grouped.items():
        times = [m.at for m in group]
        ended = any(m.kind == "end" for m in group)
        found.append(Run(job, attempt, host, min(times), max(times), ended))
    return sorted(found, key=lambda r: r.start)


def overlaps(marks: Iterable[Mark], pad: float = PAD) -> list[str]:
    """Every pair of runs of one job that were alive at the same time, one line each."""
    by_job: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs(marks):
        by_job[run.job].append(run)
    problems = []
    for job, job_runs in sorted(by_job.items()):
        for a, b in itertools.combinations(job_runs, 2):
            if b.start < a.until(pad):
                problems.append(
                    f"{job}: attempt {a.attempt} on {a.host} (until {a.until(pad):.2f}) and "
                    f"attempt {b.attempt} on {b.host} (from {b.start:.2f}) overlap"
                )
    return problems


def ends(marks: Iterable[Mark]) -> collections.Counter[str]:
    """How many `end` marks each job wrote: a job that ran to completion once has 1."""
    return collections.Counter(m.job for m in marks if m.kind == "end")


def gaps(marks: Iterable[Mark], pad: float = PAD) -> dict[str, float]:
    """Per job, the shortest time between one run's latest life and the next one's start."""
    by_job: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs(marks):
        by_job[run.job].append(run)
    return {
        job: min(b.start - a.until(pad) for a, b in itertools.pairwise(job_runs))
        for job, job_runs in by_job.items()
        if len(job_runs) > 1
    }


def by_attempt(marks: Iterable[Mark]) -> dict[tuple[str, int], Run]:
    """The run of each (job, attempt)."""
    return {(run.job, run.attempt): run for run in runs(marks)}


def starts(marks: Iterable[Mark]) -> collections.Counter[tuple[str, int]]:
    """How many `start` marks each (job, attempt) wrote: more than one is a second run."""
    return collections.Counter((m.job, m.attempt) for m in marks if m.kind == "start")
