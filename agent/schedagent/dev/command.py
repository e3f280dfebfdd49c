"""`schedagent dev`: a local cluster in the foreground until Ctrl-C, and how to use it."""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from schedagent.ctl.keys import DEV_KEY_PATH
from schedagent.dev.cluster import AGENT_COMMAND, LocalCluster
from schedagent.dev.procs import NATS_DEFAULT_PORT, HarnessError, ManagedProcess


def run_dev(
    agents: int = 3,
    *,
    base_dir: Path | str | None = None,
    start_timeout: float = 30.0,
    agent_command: Sequence[str] = AGENT_COMMAND,
    out: TextIO | None = None,
) -> int:
    """`schedagent dev`: run a local cluster until SIGINT/SIGTERM (main thread only).

    An agent that dies is reported and the rest keep running (killing one is a
    way to watch failover); if etcd or NATS dies, everything stops and this returns 1.
    """
    out = out or sys.stdout
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = LocalCluster(
        agents,
        base_dir=base_dir,
        default_ports=True,
        # Ctrl-C must finish well inside stop()'s 15 s: a short drain, then hand back.
        agent_overrides={"jobs": {"drain_timeout": 5.0}},
        start_timeout=start_timeout,
        agent_command=agent_command,
    )
    try:
        # Until the cluster is up SIGTERM unwinds like Ctrl-C, so `finally` still stops it.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        cluster.start()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in previous:
            signal.signal(sig, on_signal)
        _install_dev_key(cluster)
        print(_banner(cluster), file=out, flush=True)
        return _supervise(cluster, stop, out)
    except HarnessError as exc:
        print(f"schedagent dev: {exc}\n(files kept in {cluster.base_dir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        try:
            cluster.stop()
        except Exception as exc:
            print(f"schedagent dev: {exc!r} (files kept in {cluster.base_dir})", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(cluster: LocalCluster, stop: threading.Event, out: TextIO) -> int:
    reported: set[str] = set()
    while not stop.wait(0.5):
        for proc in cluster.dead():
            if proc.name in reported:
                continue
            reported.add(proc.name)
            cluster.keep_dir = True
            print(
                f"schedagent dev: {proc.name} (pid {proc.pid}) exited with code "
                f"{proc.returncode}; log: {proc.log_path}",
                file=sys.stderr,
                flush=True,
            )
            if proc in (cluster.etcd, cluster.nats):
                print("schedagent dev: cannot go on without it; stopping", file=sys.stderr)
                return 1
    print("schedagent dev: stopping", file=out, flush=True)
    return 0


def _banner(cluster: LocalCluster) -> str:
    rows: list[tuple[str, str, ManagedProcess]] = [
        ("etcd", cluster.etcd_endpoint, cluster.etcd),
        ("nats", cluster.nats_url, cluster.nats),
    ]
    rows += [(a.name, f"pid {a.pid}", a) for a in cluster.agents.values()]
    lines = [
        f"schedagent dev: {len(cluster.agents)} agents up in {cluster.base_dir} (Ctrl-C stops)"
    ]
    lines += [f"  {name:<8} {what:<26} log {p.log_path}" for name, what, p in rows]
    lines += [f"  {a.name:<8} metrics {a.metrics_url or 'off'}" for a in cluster.agents.values()]
    lines.append("Try:")
    lines.append(
        f"  export SCHEDCTL_KEY={cluster.key_path}   # the operator key jobs are signed with"
    )
    if cluster.nats.port != NATS_DEFAULT_PORT:
        lines.append(
            f"  export SCHEDCTL_NATS_URL={cluster.nats_url}   # or --nats {cluster.nats_url}"
        )
    ctl = _schedctl_command()
    lines += [f"  {ctl} nodes", f'  {ctl} submit --cmd "echo hello" --wait']
    lines.append(f"  {ctl} ui   # the web console, on http://127.0.0.1:8090/")
    return "\n".join(lines)


def _schedctl_command() -> str:
    """`schedctl` if PATH finds ours, else the path beside this interpreter (the venv's)."""
    beside = Path(sys.executable).parent / "schedctl"
    found = shutil.which("schedctl")
    if found is not None and (not beside.exists() or Path(found).resolve() == beside.resolve()):
        return "schedctl"
    return str(beside) if beside.exists() else "schedctl"


def _install_dev_key(cluster: LocalCluster) -> None:
    """Put this cluster's operator key where a plain `schedctl` looks last, so the tour
    works with no flags. Production agents do not trust it."""
    target = Path(DEV_KEY_PATH).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster.signing_key.save(target)
