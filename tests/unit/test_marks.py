"""A marked command keeps its exit status and writes its own start, beats and end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from schedagent.dev import marks


def sh(cmd: str) -> int:
    env = {**os.environ, "SCHED_JOB_ID": "j" * 20, "SCHED_ATTEMPT": "2"}
    return subprocess.run(["/bin/sh", "-c", cmd], env=env, timeout=10, check=False).returncode


def test_a_marked_command_keeps_its_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "marks"
    assert sh(marks.marked("exit 3", out)) == 3
    run = marks.read(out)[("j" * 20, 2)]
    assert run.ended and run.starts == 1 and run.start <= run.last


def test_a_beating_command_marks_while_it_runs(tmp_path: Path) -> None:
    out = tmp_path / "marks"
    assert sh(marks.marked("sleep 0.7", out, beat=True)) == 0
    run = marks.read(out)[("j" * 20, 2)]
    assert run.last - run.start >= 0.6
    assert out.read_text().count(" beat ") >= 2


def test_reading_skips_cut_lines_and_a_missing_file(tmp_path: Path) -> None:
    out = tmp_path / "marks"
    assert marks.read(out) == {}
    out.write_text(f"{'j' * 20} 1 start 10.5\n{'j' * 20} 1 be\n{'j' * 20} 1 start 11\n")
    run = marks.read(out)[("j" * 20, 1)]
    assert (run.start, run.last, run.starts, run.ended) == (10.5, 11.0, 2, False)
