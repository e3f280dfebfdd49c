"""schedctl's exit status on a real cluster: a job's status vs. schedctl's own failures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats

from helpers import marker
from schedagent.ctl.exits import (
    EXIT_NO_CLUSTER,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
)
from schedagent.dev.cluster import LocalCluster

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")
FAST = {"node_ttl": 4, "jobs": {"retry_backoff": 0.2}}


async def schedctl(
    cluster: LocalCluster, *args: str, prefix: str = "sched"
) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "SCHEDCTL_NATS_URL": cluster.nats_url,
        "SCHEDCTL_KEY": str(cluster.key_path),
        "SCHEDCTL_PREFIX": prefix,
    }
    done = await asyncio.to_thread(
        subprocess.run, [SCHEDCTL, *args], capture_output=True, text=True, env=env, timeout=90
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


async def test_a_job_exiting_3_is_told_from_no_agent_answering(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    job_status, out, _ = await schedctl(cluster, "submit", "--cmd", "echo hi; exit 3", "--wait")
    assert (job_status, out) == (3, "hi\n")
    # The same NATS, but no agent serves this prefix: nobody answers.
    nobody, _, err = await schedctl(cluster, "nodes", prefix="nobody")
    assert nobody == EXIT_NO_CLUSTER, err
    assert "no agent answered" in err
    unknown, _, err = await schedctl(cluster, "status", "018f00000000feedf00d")
    assert unknown == EXIT_NOT_FOUND, err
    usage, _, err = await schedctl(cluster, "submit", "--cmd", "true", "--cpus", "-1")
    assert usage == EXIT_USAGE, err
    assert len({job_status, nobody, unknown, usage}) == 4


async def test_wait_and_logs_follow_exit_with_the_job_status(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    ids = {}
    for name, cmd in (("ok", "true"), ("three", "exit 3"), ("five", "exit 5")):
        status, out, err = await schedctl(cluster, "submit", "--cmd", f"sleep 1; {cmd}")
        assert status == 0, err
        ids[name] = out.strip()
    one, out, _ = await schedctl(cluster, "wait", ids["five"])
    assert one == 5 and f"{ids['five']}  FAILED  exit 5" in out, out
    several, out, _ = await schedctl(cluster, "wait", ids["ok"], ids["three"], ids["five"])
    assert several == 3, out  # the first, in the order given, that did not succeed
    assert out.splitlines()[0] == f"{ids['ok']}  SUCCEEDED  exit 0"
    fine, _, _ = await schedctl(cluster, "wait", ids["ok"])
    assert fine == 0
    status, out, _ = await schedctl(cluster, "submit", "--cmd", "sleep 2; echo late; exit 6")
    assert status == 0
    followed, logged, _ = await schedctl(cluster, "logs", "-f", out.strip())
    assert (followed, logged) == (6, "late\n")
    # A job that ended already: -f exits with its status at once.
    again, _, _ = await schedctl(cluster, "logs", "-f", ids["three"])
    assert again == 3
    missing, _, _ = await schedctl(cluster, "wait", "018f00000000feedf00d")
    assert missing == EXIT_NOT_FOUND


async def test_wait_gives_up_on_an_unplaceable_job_naming_why(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(2, agent_overrides=FAST)
    args = ("submit", "--cmd", "true", "--label", "gpu=yes", "--wait", "--wait-timeout", "3s")
    status, _, err = await schedctl(cluster, *args)
    assert status == EXIT_WAIT_TIMEOUT, err
    assert "still PENDING: no node matches the constraints (label gpu=yes)" in err, err
    job_id = err.splitlines()[0]  # under --wait, the id goes to stderr
    assert f"schedctl explain {job_id}" in err
    # The job is left as it was: PENDING, not canceled.
    status, out, _ = await schedctl(cluster, "status", job_id)
    assert status == 0 and "state:     PENDING" in out, out


async def test_wait_timeout_bounds_a_running_job(cluster_factory: Any) -> None:
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    sleep = f"sleep {marker()}"
    submitted, out, _ = await schedctl(cluster, "submit", "--cmd", sleep)
    assert submitted == 0
    job_id = out.strip()
    gave_up, _, err = await schedctl(cluster, "wait", job_id, "--wait-timeout", "4")
    assert gave_up == EXIT_WAIT_TIMEOUT, err
    assert f"gave up waiting for job {job_id} after 4s: still" in err, err
    await schedctl(cluster, "cancel", job_id)
    canceled, _, _ = await schedctl(cluster, "wait", job_id)
    assert canceled == 130


async def test_ctrl_c_ends_schedctl_at_once_killed_by_sigint(cluster_factory: Any) -> None:
    # Before: exit 130, which is also a CANCELED job's status under --wait.
    cluster: LocalCluster = cluster_factory(1, agent_overrides=FAST)
    nc = await nats.connect(cluster.nats_url)
    asked = asyncio.Event()

    async def heard(msg: Any) -> None:
        asked.set()  # and no answer: schedctl is inside its request now

    await nc.subscribe("quiet.api.nodes", cb=heard)
    env = {**os.environ, "SCHEDCTL_NATS_URL": cluster.nats_url, "SCHEDCTL_PREFIX": "quiet"}
    ctl = subprocess.Popen(  # noqa: ASYNC220 - reaped in a thread below
        [SCHEDCTL, "--timeout", "60", "nodes"],
        env=env,
        stderr=subprocess.PIPE,
        # As from a terminal: a suite run in the background (`.ci/run &`) inherits
        # SIGINT ignored, and a program started so rightly keeps ignoring it.
        preexec_fn=_default_sigint,
    )
    try:
        await asyncio.wait_for(asked.wait(), 30)
        ctl.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(ctl.wait, 10) == -signal.SIGINT
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
        await nc.close()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
