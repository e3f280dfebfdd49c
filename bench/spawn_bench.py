"""What a job's spawn costs the agent: asyncio's subprocess layer under each child
watcher, against the runner's own pidfd child (host/child.py).

`python bench/spawn_bench.py`: `true` two at a time, stdout and stderr piped and read
to the end, in its own session, each way in a fresh interpreter (alternating, a few
rounds, medians); prints spawns/s and the parent's own CPU per spawn (children excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from schedagent.host.containment import Containment, Limits

WAYS = {
    "asyncio-threaded": "asyncio.create_subprocess_exec, ThreadedChildWatcher (3.11 default)",
    "asyncio-pidfd": "asyncio.create_subprocess_exec, PidfdChildWatcher",
    "child": "host/child.Child: Popen, pidfd and pipes polled by the loop",
    "runner": "host/runner.run_command (Child plus timeout, cancel, group kill)",
    "runner-cgroup": "run_command in a cgroup per spawn (gate, mkdir, limits, kill, read, rmdir)",
}
ARGV = ("/bin/sh", "-c", "true")
ENV = {"PATH": "/usr/bin:/bin"}


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def asyncio_spawn() -> None:
    proc = await asyncio.create_subprocess_exec(
        *ARGV,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )
    await proc.communicate()


async def child_spawn() -> None:
    from schedagent.host.child import STREAMS, Child

    child = Child.spawn(ARGV, ENV, None)
    for stream in STREAMS:
        while await child.read(stream, 65536):
            pass
    await asyncio.shield(child.exited)
    child.close_pipes()


async def runner_spawn(containment: Containment | None = None) -> None:
    from schedagent.host.runner import Command, run_command

    async def ignore(_stream: str, _data: bytes) -> None:
        return None

    global SPAWNED
    SPAWNED += 1
    limits = Limits(cpus=1.0)  # every job has --cpus: a quota is written for each
    command = Command("true", ENV, None, None, 1.0, name=f"bench-{SPAWNED}", limits=limits)
    outcome = await run_command(command, ignore, asyncio.Event(), containment=containment)
    if outcome.exit_code != 0:
        raise RuntimeError(f"`true` ended {outcome}")


SPAWNED = 0


def prepare(way: str) -> Callable[[], Awaitable[None]]:
    if way == "runner-cgroup":
        containment = Containment.setup(f"bench-{os.getpid()}", use_cgroups=True)
        if containment.layout is None:
            raise SystemExit("no writable cgroup hierarchy here (run as root)")
        atexit.register(containment.close)
        return lambda: runner_spawn(containment)
    if way == "asyncio-pidfd":
        asyncio.get_event_loop_policy().set_child_watcher(asyncio.PidfdChildWatcher())
    if way.startswith("asyncio"):
        return asyncio_spawn
    return child_spawn if way == "child" else runner_spawn


async def spawn_many(spawn: Callable[[], Awaitable[None]], count: int, parallel: int) -> None:
    for _ in range(count // parallel):
        await asyncio.gather(*(spawn() for _ in range(parallel)))


def measure(way: str, count: int, parallel: int) -> dict[str, float]:
    """In this interpreter: spawns per second and own CPU ms per spawn."""
    spawn = prepare(way)
    asyncio.run(spawn_many(spawn, parallel * 10, parallel))  # warm up: imports, first forks
    cpu, start = own_cpu(), time.perf_counter()
    asyncio.run(spawn_many(spawn, count, parallel))
    elapsed, cpu = time.perf_counter() - start, own_cpu() - cpu
    return {"spawns_per_s": count / elapsed, "cpu_ms_per_spawn": cpu * 1000 / count}


def compare(count: int, parallel: int, rounds: int) -> dict[str, dict[str, float]]:
    """Each way in its own interpreter, alternating, `rounds` times: the medians."""
    runs: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            argv = [sys.executable, __file__, "--one", way, "--count", str(count)]
            argv += ["--parallel", str(parallel)]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            runs[way].append(json.loads(out))
    return {w: {k: _median([r[k] for r in rs]) for k in rs[0]} for w, rs in runs.items()}


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.count, args.parallel)))
        return 0
    for way, figures in compare(args.count, args.parallel, args.rounds).items():
        print(
            f"{figures['cpu_ms_per_spawn']:6.3f} ms CPU/spawn {figures['spawns_per_s']:6.0f}/s  "
            f"{WAYS[way]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
