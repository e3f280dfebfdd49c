"""The end-to-end hosts' root file system: a Debian bookworm tree, built once and cached.

    .venv/bin/python -m tests.e2e.root     # builds it if needed, prints its path

debootstrap (--variant=minbase) from the mirror this machine's own apt sources name
(packaging/test-root's host_mirror), with systemd as init, an SSH server, sudo, and
everything the playbook installs (etcd, NATS, python3-apt for Ansible's apt module):
the hosts have no network beyond the harness's bridge, so nothing can be fetched at
deploy time, and their apt sources are left empty (an `apt update` there succeeds and
fetches nothing). A user `debian` with password-less sudo is who Ansible logs in as.

The tree is cached as a directory under $SCHEDAGENT_TEST_CACHE/e2e (default
/var/cache/schedagent-test/e2e), named by a hash of this file (which holds the package
list and every step), and used read-only as the lower layer of each host's overlayfs.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
PACKAGES = [
    # The host: systemd as PID 1, and how Ansible reaches it.
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "iproute2",
    "python3",
    # Ansible's apt module (it would install this itself, from a network the hosts lack).
    "python3-apt",
    # What the roles install: present already, so their apt tasks only confirm it.
    "etcd-server",
    "etcd-client",
    "nats-server",
    # schedagent's own Depends.
    "adduser",
    "libstdc++6",
]
CACHE = Path(os.environ.get("SCHEDAGENT_TEST_CACHE", "/var/cache/schedagent-test")) / "e2e"
USER = "debian"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _host_mirror() -> tuple[str, str | None]:
    """The packaging engineer's reading of this machine's apt sources, reused."""
    path = REPO / "packaging" / "test-root"
    loader = importlib.machinery.SourceFileLoader("schedagent_test_root", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    mirror, keyring = module.host_mirror()
    return str(mirror), keyring


def cache_key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def cached_root() -> Path:
    """The cached tree, built first if this version of the file has none."""
    root = CACHE / f"{SUITE}-{cache_key()}"
    if (root / "etc" / "os-release").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    mirror, keyring = _host_mirror()
    print(f"e2e root: building {root} from {mirror}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-") as tmp:
        tree = Path(tmp, "root")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        cmd += [f"--keyring={keyring}"] if keyring else []
        # policy-rc.d is not honoured by debootstrap itself; no init runs in the chroot,
        # so the daemons' postinsts only enable their units.
        subprocess.run(
            [*cmd, SUITE, str(tree), mirror], check=True, stdout=subprocess.DEVNULL, env=ENV
        )
        _configure(tree)
        for old in CACHE.glob(f"{SUITE}-*"):
            shutil.rmtree(old)
        tree.rename(root)
    return root


def _chroot(tree: Path, *cmd: str) -> None:
    subprocess.run(["chroot", str(tree), *cmd], check=True, env=ENV, stdout=subprocess.DEVNULL)


def _configure(tree: Path) -> None:
    _chroot(tree, "apt-get", "clean")
    # No network at deploy time: no sources, so `apt-get update` succeeds fetching nothing
    # (and debootstrap's lists go: they would only be stale).
    (tree / "etc/apt/sources.list").write_text("")
    for path in (tree / "var/lib/apt/lists").glob("*_*"):
        path.unlink()
    _chroot(tree, "useradd", "--create-home", "--shell", "/bin/bash", USER)
    sudoers = tree / "etc/sudoers.d" / USER
    sudoers.write_text(f"{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    (tree / f"home/{USER}/.ssh").mkdir(mode=0o700)
    _chroot(tree, "chown", f"{USER}:{USER}", f"/home/{USER}/.ssh")
    # The network: the harness writes each host's address into
    # /etc/systemd/network/10-host0.network; systemd-networkd applies it.
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    networkd = "/lib/systemd/system/systemd-networkd.service"
    (wants / "systemd-networkd.service").symlink_to(networkd)
    # apt's daily timers would only fail without a network. etcd and NATS stay as
    # their packages leave them (enabled, Debian's single-node defaults), as on a host
    # where an operator installed them.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        (tree / "etc/systemd/system" / unit).symlink_to("/dev/null")
    # A fresh machine: every host gets its own machine-id at boot (the harness writes it).
    (tree / "etc/machine-id").write_text("")


if __name__ == "__main__":
    print(cached_root())
