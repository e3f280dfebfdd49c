"""Where the CPU goes: CPU per process kind per job, etcd calls per job, py-spy profiles.

Run by hand (not part of `make bench`): `python bench/profile_cluster.py --jobs 2000`.
With --py-spy (py-spy installed beside the interpreter) it records the leader and one
other agent while the jobs run and prints their top functions, self and inclusive.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from client import BenchClient

from schedagent.dev.cluster import LocalCluster

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
METRIC_RE = re.compile(r'^grpc_server_handled_total\{.*grpc_method="(\w+)".*\} (\S+)$')
FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*):\d+\)$")


def etcd_calls(url: str) -> collections.Counter[str]:
    """etcd's handled gRPC calls by method, from its Prometheus metrics."""
    with _HTTP.open(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    calls: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        match = METRIC_RE.match(line)
        if match:
            calls[match.group(1)] += int(float(match.group(2)))
    return calls


def cpu_of(pid: int) -> tuple[float, float]:
    """(own, reaped children) user+sys CPU seconds of a process."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system, t.children_user + t.children_system


def own_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def start_py_spy(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).parent / "py-spy"
    argv = [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
    argv += ["--format", "raw", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    proc.wait(30)


# A sample's cost belongs to the innermost frame of a library that owns work;
# frames of the plumbing (event loop, threads, ...) only when nothing else is on top.
OWNERS = (
    ("json/", "JSON encode/decode"),
    ("cryptography/", "signatures (Ed25519)"),
    ("schedagent/core/signing.py", "signatures (Ed25519)"),
    ("grpc/", "etcd client (grpc.aio + aetcd)"),
    ("aetcd/", "etcd client (grpc.aio + aetcd)"),
    ("nats/", "NATS client (nats-py)"),
    ("subprocess.py", "process spawn and child watcher"),
    ("asyncio/unix_events.py", "process spawn and child watcher"),
    ("asyncio/base_subprocess.py", "process spawn and child watcher"),
    ("schedagent/daemon/scheduler.py", "scheduler pass (sort, index, scan)"),
    ("schedagent/core/placement.py", "scheduler pass (sort, index, scan)"),
    ("schedagent/etcd/mirror.py", "scheduler pass (sort, index, scan)"),
    ("schedagent/core/model.py", "records (dataclass <-> dict)"),
    ("schedagent/", "other schedagent code"),
)
PLUMBING = (
    ("selectors.py", "event loop wait (epoll)"),
    ("threading.py", "other threads"),
    ("asyncio/", "asyncio plumbing"),
)


def parse_stacks(path: Path) -> tuple[list[tuple[list[str], int]], int]:
    """py-spy's raw (collapsed) stacks: [(frames root first, samples)], total samples."""
    stacks = []
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        stacks.append((stack.split(";"), int(count)))
        total += int(count)
    return stacks, total


def _frame_name(frame: str) -> str:
    match = FRAME_RE.match(frame)
    if not match:
        return frame
    short = "/".join(match.group("file").split("/")[-2:])
    return f"{match.group('func')} ({short})"


def _file(frame: str) -> str:
    match = FRAME_RE.match(frame)
    return match.group("file") if match else ""


# The entry point's frames sit under every sample; they say nothing of its cost.
ROOT_FILES = ("schedagent/cli.py", "schedagent/__main__.py")
# Frames under (nearly) every sample: left out of the inclusive ranking.
ROOT_FRAMES = (
    *ROOT_FILES,
    "click/",
    "<frozen runpy>",
    "asyncio/runners.py",
    "asyncio/base_events.py",
)


def category(frames: list[str]) -> str:
    if frames[-1].startswith("Thread.run (threading.py"):
        # A thread whose target is compiled code: grpc.aio's completion-queue poller
        # (cygrpc's PollerCompletionQueue._poll_wrapper) is the only one in the agent.
        return "etcd client: grpc's poller thread"
    files = [_file(f) for f in reversed(frames) if not _file(f).startswith(ROOT_FILES)]
    for file in files:
        for part, name in OWNERS:
            if part in file:
                return name
    for part, name in PLUMBING:
        if files and part in files[0]:
            return name
    return "other"


def top_functions(path: Path, count: int) -> dict[str, Any]:
    stacks, total = parse_stacks(path)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    for frames, samples in stacks:
        names = [_frame_name(f) for f in frames]
        own[names[-1]] += samples
        for name in {_frame_name(f) for f in frames if not _file(f).startswith(ROOT_FRAMES)}:
            inclusive[name] += samples
        kinds[category(frames)] += samples
    return {
        "samples": total,
        "categories": [(n, s / total) for n, s in kinds.most_common()],
        "self": [(n, s / total) for n, s in own.most_common(count)],
        "inclusive": [(n, s / total) for n, s in inclusive.most_common(count)],
    }


async def profile(args: argparse.Namespace) -> dict[str, Any]:
    cluster = LocalCluster(3, agent_overrides={"log_level": "warning"})
    await cluster.astart()
    spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        async with BenchClient(cluster.nats_url) as client:
            await client.wait_final([await client.submit("true")])  # warm up
            leader = (await client.call("leader"))["leader"]["node"]
            worker = next(n for n in cluster.agents if n != leader)
            kinds = {"etcd": cluster.etcd.pid, "nats-server": cluster.nats.pid}
            kinds.update({f"agent {n}": a.pid for n, a in cluster.agents.items()})
            pids = {k: int(p) for k, p in kinds.items() if p}
            if args.py_spy:
                for role, name in (("leader", leader), ("worker", worker)):
                    out = Path(args.out) / f"py-spy-{role}.txt"
                    spies.append((role, start_py_spy(pids[f"agent {name}"], out, args.rate), out))
                await asyncio.sleep(1.0)  # py-spy attaches
            calls_before = etcd_calls(cluster.etcd.url)
            cpu_before = {k: cpu_of(p) for k, p in pids.items()}
            client_before, started = own_cpu(), time.time()
            if args.batch:
                ids = await client.submit_batches(["true"] * args.jobs)
            else:
                ids = await client.submit_many(["true"] * args.jobs, in_flight=64)
            submitted = time.time()
            last = await client.wait_final(ids)
            client_cpu = own_cpu() - client_before
            cpu_after = {k: cpu_of(p) for k, p in pids.items()}
            calls = etcd_calls(cluster.etcd.url) - calls_before
            for _, proc, _ in spies:
                stop_py_spy(proc)
    finally:
        await cluster.astop()
    per_kind = {
        k: {
            "own_ms_per_job": (cpu_after[k][0] - cpu_before[k][0]) * 1000 / args.jobs,
            "children_ms_per_job": (cpu_after[k][1] - cpu_before[k][1]) * 1000 / args.jobs,
        }
        for k in pids
    }
    per_kind["client"] = {"own_ms_per_job": client_cpu * 1000 / args.jobs}
    return {
        "jobs": args.jobs,
        "jobs_per_s": args.jobs / (last - started),
        "submit_s": submitted - started,
        "leader": leader,
        "worker": worker,
        "cpu": per_kind,
        "etcd_calls_per_job": {m: n / args.jobs for m, n in calls.most_common() if n},
        "profiles": {role: top_functions(out, args.top) for role, _, out in spies},
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['jobs']} jobs, {result['jobs_per_s']:.0f} jobs/s, "
        f"all submitted after {result['submit_s']:.1f} s"
    ]
    lines.append(f"leader {result['leader']}, profiled worker {result['worker']}")
    lines.append("CPU ms per job (own + reaped children):")
    total = 0.0
    for kind, cpu in result["cpu"].items():
        children = cpu.get("children_ms_per_job", 0.0)
        total += cpu["own_ms_per_job"] + children
        lines.append(f"  {kind:<14} {cpu['own_ms_per_job']:6.2f} + {children:5.2f}")
    lines.append(f"  {'total':<14} {total:6.2f}")
    lines.append("etcd gRPC calls per job:")
    for method, rate in result["etcd_calls_per_job"].items():
        lines.append(f"  {method:<14} {rate:6.2f}")
    lines.append(report_profiles(result["profiles"]))
    return "\n".join(lines)


def report_profiles(profiles: dict[str, Any]) -> str:
    lines = []
    for role, prof in profiles.items():
        lines.append(f"{role}: {prof['samples']} samples, by what they were doing:")
        for name, share in prof["categories"]:
            lines.append(f"  {share:6.1%} {name}")
        lines.append(f"{role}: top functions, self / inclusive share of the samples")
        for (own_name, own_share), (inc_name, inc_share) in zip(
            prof["self"], prof["inclusive"], strict=False
        ):
            lines.append(f"  {own_share:6.1%} {own_name[:60]:<60} {inc_share:6.1%} {inc_name[:70]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--batch", action="store_true", help="submit through submit_many")
    parser.add_argument("--py-spy", action="store_true", help="profile leader and a worker")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", default=".", help="where the py-spy stacks are written")
    parser.add_argument("--analyse", nargs="*", help="only summarise these py-spy raw files")
    args = parser.parse_args()
    if args.analyse:
        profiles = {path: top_functions(Path(path), args.top) for path in args.analyse}
        print(report_profiles(profiles))
        return 0
    result = asyncio.run(profile(args))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
