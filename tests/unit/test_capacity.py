"""Usable CPUs: the affinity set, capped by a cgroup v2 or v1 CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schedagent.host import capacity


def fake_cgroup(monkeypatch: pytest.MonkeyPatch, root: Path, proc_line: str) -> None:
    real_read = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if str(self) == "/proc/self/cgroup":
            return proc_line
        return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)


def test_v2_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "cpu.max").write_text("150000 100000\n")
    fake_cgroup(monkeypatch, tmp_path, "0::/svc\n")
    assert capacity.cgroup_cpu_quota(tmp_path) == 1.5


def test_v2_no_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    fake_cgroup(monkeypatch, tmp_path, "0::/\n")
    assert capacity.cgroup_cpu_quota(tmp_path) is None


def test_v1_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = tmp_path / "cpu,cpuacct" / "job"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("50000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    fake_cgroup(monkeypatch, tmp_path, "4:cpu,cpuacct:/job\n")
    assert capacity.cgroup_cpu_quota(tmp_path) == 0.5


def test_usable_cpus_is_capped_by_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    fake_cgroup(monkeypatch, tmp_path, "0::/\n")
    assert capacity.usable_cpus(tmp_path) == 0.5


def test_usable_cpus_follows_affinity() -> None:
    assert capacity.usable_cpus(Path("/nonexistent")) == len(os.sched_getaffinity(0))


def test_override_wins() -> None:
    assert capacity.measure(cpus_override=3.0).cpus == 3.0
