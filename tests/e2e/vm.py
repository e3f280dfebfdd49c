"""The qemu variant's root: root.py's cached tree plus a kernel, built once and cached.

    .venv/bin/python -m tests.e2e.vm     # builds it if needed, prints its path

Only for `SCHEDAGENT_E2E_HOSTS=qemu` (docs/e2e.md, "qemu variant"). A copy of the
cached root gets `linux-image-amd64` (and the initramfs-tools it depends on) from the
mirror this machine's apt sources name, then the same empty apt sources as the root.
Cached beside the root as `<root>-vm-<hash>`, the hash over the root's name and this
file; a new root or a change here builds a new one (about 2 minutes) and removes the
old. Each VM's disk is made from it per run (fleet.QemuFleet), so every run is fresh.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .root import CACHE, ENV, _host_mirror, cached_root

KERNEL_PACKAGES = ["linux-image-amd64"]


def cache_key(root: Path) -> str:
    data = root.name.encode() + Path(__file__).read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def kernel(tree: Path) -> tuple[Path, Path]:
    """The tree's kernel and initrd (the newest, should there be more than one)."""
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))[-1]
    version = vmlinuz.name.removeprefix("vmlinuz-")
    return vmlinuz, tree / "boot" / f"initrd.img-{version}"


def vm_root(root: Path) -> Path:
    """The cached root with a kernel, built first if there is none for this root."""
    target = root.parent / f"{root.name}-vm-{cache_key(root)}"
    if (target / "etc" / "os-release").exists():
        return target
    mirror, _ = _host_mirror()
    print(f"e2e vm root: building {target} from {root} and {mirror}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-vm-") as tmp:
        tree = Path(tmp, "root")
        subprocess.run(["cp", "-a", str(root), str(tree)], check=True)
        resolv = tree / "etc" / "resolv.conf"
        saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
        (tree / "etc/apt/sources.list").write_text(f"deb {mirror} bookworm main\n")
        env = {**ENV, "DEBIAN_FRONTEND": "noninteractive"}
        proc = Path(tree, "proc")
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
        try:
            for cmd in (
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *KERNEL_PACKAGES],
                ["apt-get", "clean"],
            ):
                subprocess.run(
                    ["chroot", str(tree), *cmd], check=True, env=env, stdout=subprocess.DEVNULL
                )
        finally:
            subprocess.run(["umount", str(proc)], check=True)
        # Back to the root's state: no sources, no lists, its own resolv.conf.
        (tree / "etc/apt/sources.list").write_text("")
        for path in (tree / "var/lib/apt/lists").glob("*_*"):
            path.unlink()
        resolv.unlink()
        if saved is not None:
            resolv.write_bytes(saved)
        # The disk is /dev/vda, the whole device an ext4 file system (no partitions).
        (tree / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 0\n")
        kernel(tree)  # fails here, not at boot, if there is none
        for old in root.parent.glob(f"{root.name}-vm-*"):
            shutil.rmtree(old)
        tree.rename(target)
    return target


if __name__ == "__main__":
    print(vm_root(cached_root()))
