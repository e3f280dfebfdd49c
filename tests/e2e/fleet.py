"""Three fresh Debian hosts with systemd as PID 1, as systemd-nspawn containers.

Each host boots (`systemd-nspawn --boot`) from an overlayfs over the cached root of
root.py, so every run starts from the same fresh tree and writes only to its own
upper directory. The hosts sit on a Linux bridge this harness creates, with addresses
in a private 10.231.N.0/24 that no route of this machine uses yet: the bridge is
10.231.N.1, the hosts 10.231.N.11 and up. They have no default route and no DNS, so
they reach nothing but each other and this machine.

This machine's PID 1 is not systemd: nspawn runs with --keep-unit --register=no (no
machined, so no machinectl), and a host is stopped through its PIDs, which the
harness keeps. Everything made here is undone by `Fleet.stop()` in reverse order,
each step on its own (one failing does not skip the others), by PID and by name.

With SCHEDAGENT_E2E_HOSTS=qemu, QemuFleet boots the same hosts as qemu TCG VMs on the
same bridge (docs/e2e.md, "qemu variant"); the tests see the same Host interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SSH_USER = "debian"
NSPAWN = "/usr/bin/systemd-nspawn"
SUBNET_BASE = "10.231"
# What the hosts are: nspawn containers (the default, CI's) or qemu TCG VMs (docs/e2e.md).
HOSTS = os.environ.get("SCHEDAGENT_E2E_HOSTS", "nspawn")


def run(
    *cmd: str | Path, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a command here; on failure the error names it with its output."""
    args = [str(c) for c in cmd]
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{args} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Polls check() until it returns something true; fails naming what and the last error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as exc:  # the condition is not there yet: say why at the end
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


class Teardown:
    """Undo steps run last-first; every step runs, errors are collected, not lost."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def run(self) -> None:
        errors: list[Exception] = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:
                exc.add_note(f"while undoing: {what}")
                errors.append(exc)
        if errors:
            raise ExceptionGroup("e2e teardown", errors)


def _free_subnet() -> ipaddress.IPv4Network:
    used = run("ip", "-4", "-o", "addr", "show").stdout + run("ip", "-4", "route").stdout
    choices = list(range(1, 255))
    random.shuffle(choices)
    for n in choices:
        if f"{SUBNET_BASE}.{n}." not in used:
            return ipaddress.IPv4Network(f"{SUBNET_BASE}.{n}.0/24")
    raise RuntimeError(f"no free {SUBNET_BASE}.N.0/24 on this machine")


@dataclasses.dataclass
class Host:
    """One nspawn host: its name (the hostname and the inventory's), address and PIDs."""

    name: str
    address: str
    machine: str
    base: Path
    ssh_key: Path
    # CPUs the host may use (nspawn --cpu-affinity), None for all of this machine's.
    cpu_affinity: str | None = None
    # Its own cgroup in each hierarchy systemd uses (see Fleet._boot).
    cgroups: list[Path] = dataclasses.field(default_factory=list)
    nspawn: subprocess.Popen[bytes] | None = None

    @property
    def merged(self) -> Path:
        return self.base / "merged"

    @property
    def log(self) -> Path:
        return self.base / "console.log"

    def ssh_args(self) -> list[str]:
        return [
            "ssh",
            "-i", str(self.ssh_key),
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=2",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.base}/ssh.sock",
            "-o", "ControlPersist=120",
            f"{SSH_USER}@{self.address}",
        ]  # fmt: skip

    def ssh(self, command: str, *, check: bool = True, timeout: float = 60) -> str:
        """Runs a shell command on the host as root (sudo); returns its stdout."""
        proc = run(
            *self.ssh_args(), "sudo", "sh", "-c", _quote(command), check=False, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"on {self.name}: {command!r} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def ssh_rc(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(
            *self.ssh_args(), "sudo", "sh", "-c", _quote(command), check=False, timeout=timeout
        )

    def ssh_user(self, command: str, timeout: float = 60) -> str:
        """Runs a command line as the SSH user, as an operator would type it."""
        return run(*self.ssh_args(), command, timeout=timeout).stdout

    def init_pid(self) -> int:
        """The host's PID 1, as this machine numbers it (a child of nspawn)."""
        assert self.nspawn is not None
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":\t", 1)
                    for line in status.read_text().splitlines()
                    if ":\t" in line
                )
                if int(fields["PPid"]) == self.nspawn.pid and fields["NSpid"].split()[-1] == "1":
                    return int(status.parent.name)
        raise RuntimeError(f"{self.name}: no PID 1 under nspawn {self.nspawn.pid}")

    def running(self) -> bool:
        return self.nspawn is not None and self.nspawn.poll() is None

    @property
    def expected_cpus(self) -> int:
        """The CPUs the agent should count: the host's affinity."""
        if self.cpu_affinity is None:
            return len(os.sched_getaffinity(0))
        return len(self.cpu_affinity.split(","))

    def power_off(self, timeout: float = 30) -> None:
        """Pulls the plug: SIGKILL to the host's PID 1 ends every process in it at once."""
        if self.running():
            assert self.nspawn is not None
            with contextlib.suppress(RuntimeError, ProcessLookupError):
                os.kill(self.init_pid(), signal.SIGKILL)
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout)
        # Whatever is left in the host's cgroups is killed too (nothing, normally).
        for cgroup in self.cgroups:
            if (cgroup / "cgroup.kill").exists():
                (cgroup / "cgroup.kill").write_text("1")
        for cgroup in self.cgroups:
            wait_for(f"{cgroup} empties", lambda c=cgroup: not _procs(c), timeout)


def _quote(command: str) -> str:
    return "'" + command.replace("'", "'\"'\"'") + "'"


class Fleet:
    """Boots n hosts on a fresh bridge; stop() undoes all of it, even after a failure."""

    host_class: type[Host] = Host

    def __init__(self, root: Path, run_dir: Path, count: int = 3) -> None:
        self.root = root
        self.run_dir = run_dir
        tag = uuid.uuid4().hex[:4]
        self.tag = tag
        self.bridge = f"sae2e{tag}"
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.ssh_key = run_dir / "id_ed25519"
        self.hosts = [
            self.host_class(
                name=f"node{i}",
                address=str(self.subnet.network_address + 10 + i),
                machine=f"e2e{tag}n{i}",
                base=run_dir / "hosts" / f"node{i}",
                ssh_key=self.ssh_key,
                # node1 gets one CPU, so that each host's count is its own, not this
                # machine's (schedctl nodes must show what the host may use).
                cpu_affinity=_first_cpu() if i == 1 else None,
            )
            for i in range(1, count + 1)
        ]
        self._teardown = Teardown()

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def start(self, boot_timeout: float = 90) -> None:
        try:
            self._start(boot_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, boot_timeout: float) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f", self.ssh_key)
        self._make_bridge()
        for host in self.hosts:
            self._prepare(host)
        for host in self.hosts:
            self._boot(host)
        for host in self.hosts:
            wait_for(
                f"{host.name} answers over SSH", lambda h=host: self._ssh_ready(h), boot_timeout
            )
        for host in self.hosts:
            # The host is up when systemd says so (degraded: a unit failed; show which).
            state = wait_for(
                f"{host.name} finishes booting",
                lambda h=host: _booted(h),
                boot_timeout,
            )
            if state != "running":
                failed = host.ssh("systemctl --failed --no-legend", check=False)
                raise RuntimeError(f"{host.name} booted {state}: {failed}")

    def _make_bridge(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self._teardown.push(f"bridge {self.bridge}", lambda: run("ip", "link", "del", self.bridge))
        run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def _prepare(self, host: Host) -> None:
        for sub in ("upper", "work", "merged"):
            (host.base / sub).mkdir(parents=True)
        run(
            "mount", "-t", "overlay", "overlay",
            "-o", f"lowerdir={self.root},upperdir={host.base}/upper,workdir={host.base}/work",
            host.merged,
        )  # fmt: skip
        self._teardown.push(f"overlay {host.merged}", lambda: _umount(host.merged))
        etc = host.merged / "etc"
        (etc / "hostname").write_text(f"{host.name}\n")
        (etc / "machine-id").write_text(f"{uuid.uuid4().hex}\n")
        names = "".join(f"{h.address}\t{h.name}\n" for h in self.hosts)
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{names}")
        (etc / "systemd/network/10-host0.network").write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={host.address}/{self.subnet.prefixlen}\nLinkLocalAddressing=no\n"
        )
        ssh_dir = host.merged / "home" / SSH_USER / ".ssh"
        keys = ssh_dir / "authorized_keys"
        keys.write_text(Path(f"{self.ssh_key}.pub").read_text())
        owner = ssh_dir.stat()
        os.chown(keys, owner.st_uid, owner.st_gid)
        keys.chmod(0o600)

    def _boot(self, host: Host) -> None:
        # This machine's PID 1 is not systemd, so nspawn (--keep-unit) would leave every
        # host in the cgroup it was started from, "/": the hosts' systemds would then
        # share one system.slice/schedagent.service and could not kill a unit's
        # processes. Each host gets a cgroup of its own, in the unified hierarchy and in
        # systemd's named one, which nspawn makes the root of the host's cgroup namespace.
        for hierarchy in _cgroup_hierarchies():
            parent = hierarchy / f"sae2e-{self.tag}"
            if not parent.exists():
                parent.mkdir()
                self._teardown.push(f"cgroup {parent}", parent.rmdir)
            cgroup = parent / host.name
            cgroup.mkdir()
            self._teardown.push(f"cgroup {cgroup}", lambda c=cgroup: _remove_cgroup(c))
            host.cgroups.append(cgroup)
        enter = "".join(f'echo $$ >"{c}/cgroup.procs" && ' for c in host.cgroups)
        affinity = [f"--cpu-affinity={host.cpu_affinity}"] if host.cpu_affinity else []
        with host.log.open("wb") as log:
            host.nspawn = subprocess.Popen(
                [
                    "/bin/sh",
                    "-c",
                    f'{enter}exec "$@"',
                    "enter-cgroup",
                    NSPAWN,
                    *affinity,
                    "--boot",
                    "--keep-unit",
                    "--register=no",
                    f"--machine={host.machine}",
                    f"--hostname={host.name}",
                    f"--directory={host.merged}",
                    f"--network-bridge={self.bridge}",
                    "--resolv-conf=off",
                    "--link-journal=no",
                    "--console=read-only",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._teardown.push(f"host {host.name} (nspawn {host.nspawn.pid})", host.power_off)
        self._teardown.push(f"ssh master of {host.name}", lambda: _close_master(host))

    def _ssh_ready(self, host: Host) -> bool:
        if not host.running():
            raise RuntimeError(f"{host.name}: nspawn exited; see {host.log}")
        with socket.create_connection((host.address, 22), timeout=1):
            pass
        return host.ssh_rc("true", timeout=15).returncode == 0

    def stop(self) -> None:
        self._teardown.run()


def _booted(host: Host) -> str | None:
    state = host.ssh_rc("systemctl is-system-running", timeout=15).stdout.strip()
    return state if state in ("running", "degraded") else None


def _cgroup_hierarchies() -> list[Path]:
    """Where the unified (cgroup2) and systemd's named cgroup hierarchies are mounted."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, options = line.split()[:4]
        if kind == "cgroup2" or (kind == "cgroup" and "name=systemd" in options.split(",")):
            found.append(Path(where))
    if not found:
        raise RuntimeError("no cgroup2 or name=systemd hierarchy mounted")
    return found


def _remove_cgroup(cgroup: Path) -> None:
    """rmdir the cgroup and the ones the host's systemd made in it, deepest first."""
    for path, _, _ in os.walk(cgroup, topdown=False):
        os.rmdir(path)


def _procs(cgroup: Path) -> list[str]:
    procs = cgroup / "cgroup.procs"
    return procs.read_text().split() if procs.exists() else []


def _first_cpu() -> str | None:
    cpus = sorted(os.sched_getaffinity(0))
    return str(cpus[0]) if len(cpus) > 1 else None


def _umount(path: Path) -> None:
    if os.path.ismount(path):
        run("umount", path)


def _close_master(host: Host) -> None:
    sock = host.base / "ssh.sock"
    if sock.exists():
        run(
            *host.ssh_args()[:-1],
            "-O",
            "exit",
            f"{SSH_USER}@{host.address}",
            check=False,
            timeout=10,
        )


# The qemu variant (SCHEDAGENT_E2E_HOSTS=qemu; docs/e2e.md): the same hosts as VMs.
QEMU = "/usr/bin/qemu-system-x86_64"
DISK_SIZE = "4G"


@dataclasses.dataclass
class VmHost(Host):
    """One qemu VM: its disk, its tap on the fleet's bridge, its qemu process."""

    tap: str = ""
    disk: Path | None = None
    qemu: subprocess.Popen[bytes] | None = None
    # -smp: one CPU each (TCG on this 2-core machine); the agent must count 1.
    cpus: int = 1

    def running(self) -> bool:
        return self.qemu is not None and self.qemu.poll() is None

    @property
    def expected_cpus(self) -> int:
        return self.cpus

    def power_off(self, timeout: float = 30) -> None:
        """Pulls the plug: SIGKILL to qemu ends the VM, its kernel and all, at once."""
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait(timeout)


class QemuFleet(Fleet):
    """Fleet with qemu TCG VMs instead of nspawn containers; same bridge and addresses.

    Each VM's disk is a raw ext4 image made for this run (`mkfs.ext4 -d`) from an
    overlay over the cached VM root (vm.py), with the same per-host files as an nspawn
    host; the kernel and initrd are the root's, booted with -kernel/-initrd. Its NIC
    is a tap on the fleet's bridge; the serial console goes to the host's console.log.
    """

    host_class = VmHost

    def __init__(self, root: Path, run_dir: Path, count: int = 3) -> None:
        super().__init__(root, run_dir, count)
        from .vm import kernel

        self.kernel, self.initrd = kernel(root)

    def start(self, boot_timeout: float = 600) -> None:
        super().start(boot_timeout)

    def _prepare(self, host: Host) -> None:
        assert isinstance(host, VmHost)
        super()._prepare(host)
        # The VM's NIC is eth0 (net.ifnames=0), not nspawn's host0.
        (host.merged / "etc/systemd/network/10-host0.network").write_text(
            "[Match]\nName=eth0\n\n[Network]\n"
            f"Address={host.address}/{self.subnet.prefixlen}\nLinkLocalAddressing=no\n"
        )
        disk = host.base / "disk.raw"
        run("truncate", "-s", DISK_SIZE, disk)
        host.disk = disk
        self._teardown.push(f"disk {disk}", lambda: disk.unlink(missing_ok=True))
        run("mkfs.ext4", "-q", "-F", "-L", host.name, "-d", host.merged, disk, timeout=600)
        # The image holds the host's tree now; the overlay is not needed while it runs.
        _umount(host.merged)

    def _boot(self, host: Host) -> None:
        assert isinstance(host, VmHost) and host.disk is not None
        index = self.hosts.index(host) + 1
        host.tap = f"{self.bridge}t{index}"
        run("ip", "tuntap", "add", "dev", host.tap, "mode", "tap")
        self._teardown.push(f"tap {host.tap}", lambda: run("ip", "link", "del", host.tap))
        run("ip", "link", "set", host.tap, "master", self.bridge)
        run("ip", "link", "set", host.tap, "up")
        mac = f"52:54:00:{self.tag[:2]}:{self.tag[2:4]}:{index:02x}"
        append = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1"
        with (host.base / "qemu.log").open("wb") as out:
            host.qemu = subprocess.Popen(
                [
                    QEMU,
                    "-accel", "tcg",
                    "-cpu", "max",
                    "-m", "1024",
                    "-smp", str(host.cpus),
                    "-nographic",
                    "-monitor", "none",
                    "-serial", f"file:{host.log}",
                    "-no-reboot",
                    "-kernel", str(self.kernel),
                    "-initrd", str(self.initrd),
                    "-append", append,
                    "-drive", f"file={host.disk},format=raw,if=virtio",
                    "-netdev", f"tap,id=net0,ifname={host.tap},script=no,downscript=no",
                    "-device", f"virtio-net-pci,netdev=net0,mac={mac}",
                    "-name", host.machine,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._teardown.push(f"vm {host.name} (qemu {host.qemu.pid})", host.power_off)
        self._teardown.push(f"ssh master of {host.name}", lambda: _close_master(host))

    def _ssh_ready(self, host: Host) -> bool:
        if not host.running():
            raise RuntimeError(f"{host.name}: qemu exited; see {host.base}/qemu.log, {host.log}")
        return super()._ssh_ready(host)
