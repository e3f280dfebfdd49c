"""Batch submit on real etcd, NATS and three agents: `schedctl submit --file` and the
`submit_many` verb. What ran is read from marks the jobs write, not from the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiclient import ApiClient
from schedagent.core.signing import SigningKey
from schedagent.ctl.exits import EXIT_ERROR
from schedagent.dev.cluster import LocalCluster

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(
        3, agent_overrides={"log_level": "warning"}, base_dir=tmp_path_factory.mktemp("cluster")
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


def schedctl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> Any:
    argv = [SCHEDCTL, "--nats", cluster.nats_url, "--key", str(cluster.key_path), *args]
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


def write_lines(path: Path, specs: list[dict[str, Any] | str]) -> Path:
    path.write_text("\n".join(s if isinstance(s, str) else json.dumps(s) for s in specs) + "\n")
    return path


def marks(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_2000_specs_from_a_file_all_run_once_and_succeed(
    cluster: LocalCluster, api: ApiClient, tmp_path: Path
) -> None:
    done = tmp_path / "marks"
    specs: list[dict[str, Any] | str] = [{"cmd": f"echo {n} >> {done}"} for n in range(2000)]
    result = schedctl(cluster, "submit", "--file", str(write_lines(tmp_path / "jobs", specs)))
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 2000 and len(set(ids)) == 2000
    jobs = await api.wait_all(ids, deadline=240)
    assert {job["state"] for job in jobs.values()} == {"SUCCEEDED"}
    ran = marks(done)
    assert sorted(ran, key=int) == [str(n) for n in range(2000)]  # each once, none missing


async def test_a_bad_line_is_named_and_nothing_of_it_is_submitted(
    cluster: LocalCluster, api: ApiClient, tmp_path: Path
) -> None:
    done, token = tmp_path / "marks", uuid.uuid4().hex
    lines: list[dict[str, Any] | str] = [
        {"cmd": f"echo good1 >> {done}"},
        '{"cmd": "echo broken',  # line 2: not JSON
        {"cmd": f"echo good3 >> {done}"},
        {"cmd": f"echo {token}-4 >> {done}", "cpus": -1},  # line 4: refused
        {"cmd": f"echo {token}-5 >> {done}", "priority": 9},  # line 5: no such field
        "",
        {"cmd": f"echo good7 >> {done}", "retries": 1},
    ]
    result = schedctl(cluster, "submit", "--file", str(write_lines(tmp_path / "jobs", lines)))
    assert result.returncode == EXIT_ERROR
    errors = result.stderr.splitlines()
    assert [e.split(":")[1].strip() for e in errors] == ["line 2", "line 4", "line 5"], errors
    assert "cpus" in errors[1] and "priority" in errors[2]
    ids = result.stdout.split()
    assert len(ids) == 3
    await api.wait_all(ids)
    assert sorted(marks(done)) == ["good1", "good3", "good7"]
    assert not [j for j in await api.list_all() if token in j["spec"]["cmd"]]


async def test_idempotency_keys_hold_within_and_across_batches(
    cluster: LocalCluster, api: ApiClient, tmp_path: Path
) -> None:
    done, run = tmp_path / "marks", uuid.uuid4().hex[:8]
    # 1,200 lines: two requests (1,000 + 200). Line 1,000 repeats line 999's key in the
    # same request; lines 1,001-1,200 repeat the keys of lines 1-200 from the first.
    keys = [f"{run}-{n % 1000}" for n in range(1200)]
    keys[999] = keys[998]
    specs: list[dict[str, Any] | str] = [
        {"cmd": f"echo {n + 1} >> {done}", "idempotency_key": keys[n]} for n in range(1200)
    ]
    path = write_lines(tmp_path / "jobs", specs)
    first = schedctl(cluster, "submit", "--file", str(path), "--json")
    assert first.returncode == 0, first.stderr
    results = json.loads(first.stdout)["jobs"]
    by_line = {r["line"]: r for r in results}
    assert by_line[1000]["id"] == by_line[999]["id"] and by_line[1000]["created"] is False
    for line in range(1001, 1201):
        assert by_line[line]["id"] == by_line[line - 1000]["id"]
        assert by_line[line]["created"] is False
    assert [r["created"] for r in results[:999]] == [True] * 999
    distinct = {r["id"] for r in results}
    assert len(distinct) == 999
    await api.wait_all(list(distinct), deadline=240)
    assert sorted(marks(done), key=int) == [str(line) for line in range(1, 1000)]

    again = schedctl(cluster, "submit", "--file", str(path), "--json")
    assert again.returncode == 0, again.stderr
    repeat = json.loads(again.stdout)["jobs"]
    assert [r["id"] for r in repeat] == [r["id"] for r in results]
    assert not [r for r in repeat if r["created"]]
    assert len([j for j in await api.list_all() if run in str(j["spec"]["idempotency_key"])]) == 999


async def test_one_bad_spec_is_an_error_for_its_index_only(
    cluster: LocalCluster, api: ApiClient, tmp_path: Path
) -> None:
    done = tmp_path / "marks"
    stranger = SigningKey.generate()
    specs = [
        api.signed({"cmd": f"echo 0 >> {done}"}),
        {"cmd": f"echo 1 >> {done}", "signature": stranger.sign({"cmd": "x"}).to_dict()},
        {"cmd": f"echo 2 >> {done}", "env": {"BAD NAME": "x"}},
        api.signed({"cmd": f"echo 3 >> {done}"}),
        "not a spec",
    ]
    reply = await api.raw("submit_many", json.dumps({"v": 1, "specs": specs}).encode())
    assert reply["ok"], reply
    jobs = reply["jobs"]
    assert [("id" in j, j.get("index")) for j in jobs] == [
        (True, None),
        (False, 1),
        (False, 2),
        (True, None),
        (False, 4),
    ]
    assert "unknown key" in jobs[1]["error"] and "env" in jobs[2]["error"]
    await api.wait_all([jobs[0]["id"], jobs[3]["id"]])
    assert sorted(marks(done)) == ["0", "3"]


async def test_a_batch_over_the_limit_is_refused_whole(api: ApiClient) -> None:
    specs = [api.signed({"cmd": "true"}) for _ in range(1001)]
    reply = await api.raw("submit_many", json.dumps({"v": 1, "specs": specs}).encode())
    assert reply["ok"] is False and reply["code"] == "bad_request"
    assert "at most 1000" in reply["error"]
