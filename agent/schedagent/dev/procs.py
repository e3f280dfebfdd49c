"""Child processes for the dev cluster and the tests: free ports, a managed process that
is signalled only by its own PID, and etcd and nats-server on loopback."""

from __future__ import annotations

import base64
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

import psutil

from schedagent.errors import SchedagentError

HOST = "127.0.0.1"
ETCD_BIN = "/usr/bin/etcd"
NATS_BIN = "/usr/sbin/nats-server"
ETCD_DEFAULT_PORTS = (2379, 2380)
NATS_DEFAULT_PORT = 4222
REAP_TIMEOUT = 10.0

# Readiness probes must reach 127.0.0.1 directly even when http_proxy is set.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_handed_out: set[int] = set()


class HarnessError(SchedagentError):
    """A local server or agent failed to start, become ready or stop."""


def port_is_free(port: int) -> bool:
    """True if nothing listens on (or holds) 127.0.0.1:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free TCP port on 127.0.0.1, not handed out before by this process."""
    # Below the kernel's ephemeral range: a client reconnecting to a killed server
    # could otherwise take the server's port as its local port (or connect to itself)
    # and the restarted server could not bind it again.
    high = _ephemeral_low()
    for _ in range(200 if high > 11000 else 0):
        port = random.randrange(10000, high)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


def pick_port(preferred: int | None) -> int:
    """The preferred port if it is free, else a free one."""
    if preferred is not None and port_is_free(preferred):
        return preferred
    return free_port()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll condition until it is true; HarnessError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file ('' if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class ManagedProcess:
    """One child process we started; signals only ever go to its own PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._expected_exit = False
        self._paused = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def exited_unexpectedly(self) -> bool:
        """Started, now dead, and not because stop() or kill() was called."""
        return self._proc is not None and self.returncode is not None and not self._expected_exit

    def start(self) -> None:
        if self.running:
            raise HarnessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- devcluster start #{self.starts}: {shlex.join(self.argv)}\n".encode())
            log.flush()
            try:
                # A session of its own: Ctrl-C in a terminal reaches only the harness,
                # which then stops the children in order.
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise HarnessError(f"cannot start {self.name}: {self.argv[0]}: {exc}") from exc
        self._expected_exit = False
        self._paused = False

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see wait())."""
        self._expected_exit = True
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        if self._paused:
            # A stopped process would sleep through SIGTERM until continued.
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def wait(self, timeout: float) -> int | None:
        """Reap the child, SIGKILLing it if it is still alive after timeout seconds."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return self.kill()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout seconds; always reaps. Returns the exit code."""
        self.terminate()
        return self.wait(timeout)

    def kill(self) -> int | None:
        """SIGKILL and reap."""
        self._expected_exit = True
        self._paused = False
        if self._proc is None:
            return None
        self._proc.kill()  # Popen skips the signal if the child was already reaped
        return self._proc.wait(REAP_TIMEOUT)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop if running, then start again with the same arguments."""
        self.stop(timeout)
        self.start()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._paused = False

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        """start(); the with block's end stop()s it, also when the block raises."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise HarnessError(f"{self.name} is not running")
        self._proc.send_signal(sig)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} rc={self.returncode}>"


class _Server(ManagedProcess):
    """A child that start() waits for until a probe says it serves requests."""

    ready_timeout = 20.0
    scheme = ""
    host = HOST
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    endpoint = url

    def start(self) -> None:
        super().start()
        try:
            wait_for(self._ready, self.ready_timeout, f"{self.name} to be ready")
        except BaseException as exc:
            self.kill()
            if isinstance(exc, HarnessError):
                raise HarnessError(f"{exc}; {self.log_path}:\n{self.log_tail()}") from None
            raise

    def ready(self) -> bool:
        """Whether the server answers its readiness probe (raises if it exited)."""
        return self._ready()

    def _ready(self) -> bool:
        if self.returncode is not None:
            raise HarnessError(f"{self.name} exited with code {self.returncode} while starting")
        try:
            return self._listening() and self._probe()
        except (OSError, ValueError, psutil.Error):
            return False

    def _listening(self) -> bool:
        # Else another server already holding the port (a stale dev cluster, a lost
        # race for a free port) would answer the probe while ours fails to bind.
        conns = psutil.Process(self.pid).net_connections(kind="tcp")
        return any(c.status == psutil.CONN_LISTEN and c.laddr[1] == self.port for c in conns)

    def _probe(self) -> bool:
        raise NotImplementedError


class EtcdServer(_Server):
    """A single-member etcd 3.4 on 127.0.0.1, data and log under base_dir."""

    scheme = "http"

    def __init__(
        self,
        base_dir: Path | str,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "devcluster",
        binary: str = ETCD_BIN,
        initial_cluster: str | None = None,
    ) -> None:
        self.dir = Path(base_dir)
        # etcd creates the data dir itself, with the 0700 mode it wants.
        self.data_dir = self.dir / "data"
        self.port = client_port if client_port is not None else free_port()
        self.peer_port = peer_port if peer_port is not None else free_port()
        peer = f"http://{HOST}:{self.peer_port}"
        argv = [binary, "--name", name, "--data-dir", str(self.data_dir)]
        argv += ["--listen-client-urls", self.url, "--advertise-client-urls", self.url]
        argv += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
        argv += ["--initial-cluster", initial_cluster or f"{name}={peer}"]
        argv += ["--logger", "zap", "--log-outputs", "stderr"]
        # etcd 3.4 refuses to start when an ETCD_* variable shadows a flag we pass.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        label = name if initial_cluster else "etcd"
        super().__init__(label, argv, self.dir / "etcd.log", env=env)

    def keys(self, prefix: str) -> list[str]:
        """Keys under prefix, via etcd's JSON gateway: plain blocking HTTP, no event loop."""
        start = prefix.encode()
        end = start.rstrip(b"\xff")
        end = end[:-1] + bytes([end[-1] + 1]) if end else b"\0"
        b64 = [base64.b64encode(k).decode() for k in (start, end)]
        body = {"key": b64[0], "range_end": b64[1], "keys_only": True}
        request = urllib.request.Request(f"{self.url}/v3/kv/range", data=json.dumps(body).encode())
        with _HTTP.open(request, timeout=5) as resp:
            reply = json.load(resp)
        return [base64.b64decode(kv["key"]).decode() for kv in reply.get("kvs", [])]

    def _probe(self) -> bool:
        with _HTTP.open(f"{self.url}/health", timeout=2) as resp:
            health = json.load(resp).get("health")
        # 3.4 answers {"health": "true"}: a string, not a JSON boolean.
        return str(health).lower() == "true"


class NatsServer(_Server):
    """A nats-server with JetStream on 127.0.0.1, store and log under base_dir."""

    scheme = "nats"

    def __init__(
        self, base_dir: Path | str, *, port: int | None = None, binary: str = NATS_BIN
    ) -> None:
        self.dir = Path(base_dir)
        self.store_dir = self.dir / "store"
        self.port = port if port is not None else free_port()
        argv = [binary, "-js", "-sd", str(self.store_dir), "-a", HOST, "-p", str(self.port)]
        super().__init__("nats", [*argv, "-n", "devcluster"], self.dir / "nats.log")

    def _probe(self) -> bool:
        # Speaks the text protocol directly so start() stays synchronous; asking
        # $JS.API.INFO proves JetStream, not just the listener, is up.
        with socket.create_connection((HOST, self.port), timeout=2) as sock:
            stream = sock.makefile("rb")
            if not stream.readline().startswith(b"INFO "):
                return False
            sock.sendall(
                b'CONNECT {"verbose":false,"protocol":1,"headers":true,"no_responders":true}\r\n'
                b"SUB _devcluster.ready 1\r\nPUB $JS.API.INFO _devcluster.ready 0\r\n\r\n"
            )
            header = stream.readline()
            # HMSG here is a 503 "no responders": JetStream is not serving yet.
            if not header.startswith(b"MSG "):
                return False
            reply = json.loads(stream.read(int(header.split()[-1])))
            return isinstance(reply, dict) and "error" not in reply
