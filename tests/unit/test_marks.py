"""The mark reader and overlap checker (dev/marks.py), and the marking job itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from schedagent.dev import marks
from schedagent.dev.marks import Mark, Run

J = "018f0000000000000001"


def lines(*entries: str) -> str:
    return "".join(f"{e}\n" for e in entries)


def test_parse_skips_a_line_cut_short() -> None:
    text = lines(f"start {J} 1 10.0", f"beat {J} 1 10.2", f"beat {J} 1", "junk", f"end {J} x 1")
    assert marks.parse(text, "n1") == [
        Mark("start", J, 1, 10.0, "n1"),
        Mark("beat", J, 1, 10.2, "n1"),
    ]


def test_a_killed_run_may_have_lived_one_beat_past_its_last_mark() -> None:
    seen = marks.parse(lines(f"start {J} 1 10.0", f"beat {J} 1 12.0"), "n2")
    assert marks.runs(seen) == [Run(J, 1, "n2", 10.0, 12.0, ended=False)]
    assert marks.runs(seen)[0].until() == 12.0 + marks.PAD


def test_overlap_is_found_across_hosts_and_a_clean_retry_is_not() -> None:
    first = marks.parse(lines(f"start {J} 1 10.0", f"beat {J} 1 12.0"), "n2")
    late = marks.parse(lines(f"start {J} 2 12.1", f"end {J} 2 20.0"), "n1")
    clean = marks.parse(lines(f"start {J} 2 13.0", f"end {J} 2 20.0"), "n1")
    assert marks.overlaps(first + late) == [
        f"{J}: attempt 1 on n2 (until 12.30) and attempt 2 on n1 (from 12.10) overlap"
    ]
    assert marks.overlaps(first + clean) == []
    assert marks.gaps(first + clean)[J] == pytest.approx(13.0 - 12.0 - marks.PAD)
    assert marks.ends(first + clean) == {J: 1}


def test_the_job_command_marks_start_beats_and_end(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "SCHED_JOB_ID": J, "SCHED_ATTEMPT": "3"}
    subprocess.run(
        ["/bin/sh", "-c", marks.job_command(0.6)], cwd=tmp_path, env=env, check=True, timeout=30
    )
    seen = marks.read({"here": tmp_path / marks.FILE, "gone": tmp_path / "missing"})
    kinds = [m.kind for m in seen]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("beat") == 3
    assert {(m.job, m.attempt, m.host) for m in seen} == {(J, 3, "here")}
    (run,) = marks.runs(seen)
    assert run.ended and 0.5 < run.last - run.start < 5


def sh(cmd: str) -> int:
    env = {**os.environ, "SCHED_JOB_ID": J, "SCHED_ATTEMPT": "2"}
    return subprocess.run(["/bin/sh", "-c", cmd], env=env, timeout=10, check=False).returncode


def test_a_marked_command_keeps_its_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "marks"
    assert sh(marks.marked("exit 3", out)) == 3
    run = marks.by_attempt(marks.read_file(out))[(J, 2)]
    assert run.ended and marks.starts(marks.read_file(out)) == {(J, 2): 1}


def test_a_beating_marked_command_marks_while_it_runs(tmp_path: Path) -> None:
    out = tmp_path / "marks"
    assert sh(marks.marked("sleep 0.7", out, beat=True)) == 0
    run = marks.by_attempt(marks.read_file(out))[(J, 2)]
    assert run.last - run.start >= 0.6
    assert [m.kind for m in marks.read_file(out)].count("beat") >= 2


def test_a_second_start_of_one_attempt_is_counted(tmp_path: Path) -> None:
    out = tmp_path / "marks"
    assert marks.read_file(out) == []
    out.write_text(lines(f"start {J} 1 10.5", f"beat {J} 1", f"start {J} 1 11"))
    assert marks.starts(marks.read_file(out)) == {(J, 1): 2}
    run = marks.by_attempt(marks.read_file(out))[(J, 1)]
    assert (run.start, run.last, run.ended) == (10.5, 11.0, False)
