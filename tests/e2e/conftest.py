"""Session fixtures of the end-to-end suite: the two .debs, the cached root, the fleet,
the first deployment. See docs/e2e.md.

Built once per session, in this order, and torn down even when a step fails: the
packages and the root (concurrently), three hosts booted on a bridge, an inventory, a
`deploy.yml --check` on the fresh hosts and a first `ansible-playbook deploy.yml`. The
tests then share that cluster, in the order they are written (later ones break hosts on
purpose).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from debs import Debs

from .deploy import PlaybookRun, Schedctl, playbook, write_inventory
from .fleet import HOSTS, Fleet, QemuFleet, run
from .root import cached_root

TOOLS = ("systemd-nspawn", "debootstrap", "ssh", "ssh-keygen", "ip", "dpkg-buildpackage")
QEMU_TOOLS = ("qemu-system-x86_64", "mkfs.ext4")
PHASES: dict[str, float] = {}


@dataclasses.dataclass
class Cluster:
    fleet: Fleet
    inventory: Path
    ctl: Schedctl
    debs: Debs
    first_run: PlaybookRun
    logs: Path
    # `deploy.yml --check` on the fresh hosts, before the first run, and whether each
    # host had the schedagent package right after it.
    fresh_check: PlaybookRun
    installed_after_check: dict[str, bool]

    def playbook(self, name: str, *extra: str) -> PlaybookRun:
        started = time.monotonic()
        result = playbook(self.inventory, self.logs / f"playbook-{name}.log", *extra)
        PHASES[f"playbook ({name})"] = time.monotonic() - started
        return result


def _need_tools() -> None:
    if HOSTS not in ("nspawn", "qemu"):
        pytest.fail(f"SCHEDAGENT_E2E_HOSTS={HOSTS!r}: nspawn or qemu", pytrace=False)
    tools = TOOLS + QEMU_TOOLS if HOSTS == "qemu" else TOOLS
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the end-to-end suite needs root (nspawn, bridges, mounts)", pytrace=False)
    if not Path("/usr/bin/ansible-playbook").exists():
        pytest.fail("/usr/bin/ansible-playbook is missing: run scripts/setup", pytrace=False)


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def artifacts(e2e_dir: Path) -> tuple[Debs, Path]:
    """`make deb`, a rebuild at a higher version, and the cached root: all at once."""
    _need_tools()
    started = time.monotonic()
    debs = Debs.in_dist(e2e_dir / "dist", "e2e1")
    builds = {v: debs.start_build(v, e2e_dir) for v in debs.versions}
    try:
        root = cached_root()
        if HOSTS == "qemu":
            from .vm import vm_root

            root = vm_root(root)
    finally:
        for proc in builds.values():
            proc.wait()
    for v, proc in builds.items():
        debs.check_build(v, proc, e2e_dir)
    PHASES["make deb x2 + root" + (" + vm root" if HOSTS == "qemu" else "")] = (
        time.monotonic() - started
    )
    return debs, root


@pytest.fixture(scope="session")
def fleet(
    artifacts: tuple[Debs, Path], e2e_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    _, root = artifacts
    started = time.monotonic()
    hosts = (QemuFleet if HOSTS == "qemu" else Fleet)(root, e2e_dir / "fleet")
    hosts.start()
    PHASES["boot 3 hosts" + (" (qemu)" if HOSTS == "qemu" else "")] = time.monotonic() - started
    try:
        yield hosts
    finally:
        if request.session.testsfailed:
            _dump(hosts)
        hosts.stop()


@pytest.fixture(scope="session")
def cluster(fleet: Fleet, artifacts: tuple[Debs, Path], e2e_dir: Path) -> Iterator[Cluster]:
    """The first deployment; its result is asserted by the first test."""
    debs, _ = artifacts
    logs = e2e_dir / "logs"
    logs.mkdir()
    # The operator: schedctl with a HOME of its own and a key the agents trust.
    home = e2e_dir / "admin-home"
    home.mkdir()
    trusted_key = Schedctl.keygen(home)
    inventory = write_inventory(fleet, e2e_dir / "inventory", debs.first, trusted_key)
    started = time.monotonic()
    fresh_check = playbook(inventory, logs / "playbook-check-fresh.log", "--check")
    PHASES["playbook --check (fresh)"] = time.monotonic() - started
    installed = {h.name: h.ssh_rc("dpkg-query -W schedagent").returncode == 0 for h in fleet.hosts}
    started = time.monotonic()
    first = playbook(inventory, logs / "playbook-first.log")
    PHASES["playbook (first)"] = time.monotonic() - started
    failed = Schedctl("", home)  # (the first test fails first)
    ctl = Schedctl.for_inventory(fleet, inventory, home) if first.returncode == 0 else failed
    yield Cluster(fleet, inventory, ctl, debs, first, logs, fresh_check, installed)
    # Ansible's SSH masters (ControlPersist) go with the hosts, not 30 s later.
    for sock in (logs / "ansible-cp").glob("*"):
        run("ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x", check=False, timeout=10)


def _dump(fleet: Fleet) -> None:
    # What CI shows of the hosts when a test failed.
    for host in fleet.hosts:
        if not host.running():
            continue
        text = host.ssh_rc(
            "systemctl status schedagent etcd nats-server --no-pager -n 0;"
            " journalctl -u schedagent -n 60 --no-pager",
            timeout=30,
        )
        sys.stderr.write(f"\n----- {host.name} ({host.address})\n{text.stdout}{text.stderr}\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if PHASES:
        terminalreporter.section("e2e phases")
        for phase, seconds in PHASES.items():
            terminalreporter.write_line(f"{phase:<36} {seconds:6.1f}s")
