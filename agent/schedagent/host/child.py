"""A child process watched by file descriptor: its exit through a pidfd, its pipes read directly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
# A gated child's first program: it waits for a line on stdin (its gate) before it execs
# the command, with stdin from /dev/null as an ungated one has. The agent opens the gate
# once it has placed the child (in its cgroup), so the command cannot fork before that;
# if the agent dies first, the gate reads end of file and nothing runs.
GATE_SCRIPT = 'read -r gate || exit 125; exec "$0" "$@" </dev/null'


class Child:
    """One spawned process, in a session (and process group) of its own.

    asyncio's subprocess layer (a transport, a protocol and stream readers per child,
    and on Python 3.11 a thread per child blocked in waitpid) costs more CPU than the
    fork and exec; this asks the loop to poll three descriptors instead
    (bench/spawn_bench.py measures both).
    """

    def __init__(self, proc: subprocess.Popen[bytes], gate: int | None = None) -> None:
        self.proc = proc
        self._gate = gate
        self.pid = proc.pid
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pipes = {"stdout": proc.stdout, "stderr": proc.stderr}
        for pipe in self._pipes.values():
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
        self._pidfd = _pidfd_open(proc.pid)
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._reap)
        else:
            _reap_in_thread(proc, loop, self._exited)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        user: int | None = None,
        group: int | None = None,
        extra_groups: Sequence[int] | None = None,
        gated: bool = False,
    ) -> Child:
        """Start argv with stdin from /dev/null and stdout/stderr into pipes; if gated,
        argv starts only once open_gate() is called.

        Raises OSError (as subprocess does) if it cannot start.
        """
        gate_read, gate = os.pipe() if gated else (subprocess.DEVNULL, None)
        try:
            proc = cls._popen(argv, env, cwd, gate_read, user, group, extra_groups, gated)
        except BaseException:
            if gate is not None:
                os.close(gate)
            raise
        finally:
            if gate is not None:
                os.close(gate_read)
        return cls(proc, gate)

    @staticmethod
    def _popen(
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        stdin: int,
        user: int | None,
        group: int | None,
        extra_groups: Sequence[int] | None,
        gated: bool,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["/bin/sh", "-c", GATE_SCRIPT, *argv] if gated else list(argv),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # its own session and process group: killable as one
            user=user,
            group=group,
            extra_groups=extra_groups,
        )

    def open_gate(self) -> None:
        """Let a gated child go on to its command."""
        if self._gate is not None:
            os.write(self._gate, b"\n")
            self._close_gate()

    def _close_gate(self) -> None:
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (-N: killed by signal N), else None."""
        return self._exited.result() if self._exited.done() else None

    @property
    def exited(self) -> asyncio.Future[int]:
        """Done with the exit status once the process has exited (await it shielded:
        cancelling it would lose the status)."""
        return self._exited

    async def read(self, stream: str, size: int) -> bytes:
        """Up to size bytes of stdout or stderr as they come; b"" at the end."""
        pipe = self._pipes[stream]
        if pipe is None or pipe.closed:
            return b""
        while True:
            try:
                return os.read(pipe.fileno(), size)
            except BlockingIOError:
                await _readable(pipe.fileno())

    def close_pipes(self) -> None:
        """Stop reading: close our ends of the pipes (a writer left behind gets EPIPE)."""
        self._close_gate()
        for pipe in self._pipes.values():
            if pipe is not None:
                pipe.close()

    def _reap(self) -> None:
        # The pidfd is readable once the process has exited: waitpid returns at once.
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        code = self.proc.wait()
        if not self._exited.done():
            self._exited.set_result(code)


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _set_once, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:  # a kernel before 5.3, or a seccomp filter
        log.debug("no pidfd for %d (%s): waiting in a thread", pid, exc)
        return None


def _reap_in_thread(
    proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop, exited: asyncio.Future[int]
) -> None:
    """Without pidfds, a thread blocks in waitpid for this child (asyncio's own fallback)."""

    def report(code: int) -> None:
        if not exited.done():
            exited.set_result(code)

    def wait() -> None:
        code = proc.wait()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(report, code)

    threading.Thread(target=wait, name=f"waitpid-{proc.pid}", daemon=True).start()
