"""Finding the cgroup hierarchies from mountinfo and /proc/self/cgroup, and sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedagent.core.sizes import format_size, memory_limit, parse_size
from schedagent.host.cgroups import (
    UNIFIED,
    Mount,
    find_layout,
    own_directory,
    parse_mountinfo,
    parse_proc_cgroup,
)
from schedagent.host.containment import Containment, Limits

# This build machine: cgroup v1 controllers beside a cgroup2 mount with no controllers.
HYBRID_MOUNTINFO = """\
23 1 253:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/a11
2:cpuacct:/
1:cpu:/
0::/
"""
# Debian 12 under systemd, the agent's unit with Delegate=yes.
PURE_MOUNTINFO = (
    "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - "
    "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
)
PURE_CGROUP = "0::/system.slice/schedagent.service\n"


def test_mountinfo_gives_each_cgroup_mount_by_hierarchy() -> None:
    mounts = {m.key: m for m in parse_mountinfo(HYBRID_MOUNTINFO)}
    assert sorted(mounts) == ["", "cpu", "cpuacct", "freezer", "memory", "name=systemd", "pids"]
    assert mounts[UNIFIED].point == Path("/sys/fs/cgroup/unified")
    assert mounts["memory"] == Mount("memory", "/", Path("/sys/fs/cgroup/memory"))
    pure = parse_mountinfo(PURE_MOUNTINFO)  # optional fields before the "-"
    assert pure == [Mount(UNIFIED, "/", Path("/sys/fs/cgroup"))]


def test_mountinfo_comounted_controllers_and_escaped_paths() -> None:
    text = (
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpuacct,cpu\n"
        "50 31 0:40 /jail /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n"
        "51 31 0:41 / /proc rw - proc proc rw\n"
        "garbage line\n"
    )
    mounts = parse_mountinfo(text)
    assert mounts[0].key == "cpu,cpuacct"  # as /proc/self/cgroup names it
    assert mounts[1] == Mount(UNIFIED, "/jail", Path("/mnt/my cgroups"))
    assert len(mounts) == 2


def test_proc_cgroup_gives_the_path_in_each_hierarchy() -> None:
    paths = parse_proc_cgroup(HYBRID_CGROUP + "3:cpuacct,cpu:/x\nnonsense\n")
    assert paths[UNIFIED] == "/"
    assert paths["memory"] == "/process_api/a11"
    assert paths["cpu,cpuacct"] == "/x"
    assert paths["name=systemd"] == "/"
    assert parse_proc_cgroup(PURE_CGROUP) == {UNIFIED: "/system.slice/schedagent.service"}


def test_own_directory_under_a_mount_of_part_of_the_hierarchy() -> None:
    whole = Mount(UNIFIED, "/", Path("/sys/fs/cgroup"))
    assert own_directory(whole, "/a/b") == Path("/sys/fs/cgroup/a/b")
    assert own_directory(whole, "/") == Path("/sys/fs/cgroup")
    part = Mount(UNIFIED, "/jail", Path("/mnt/cg"))
    assert own_directory(part, "/jail/job") == Path("/mnt/cg/job")
    assert own_directory(part, "/jailbreak") is None  # not under the mount's root
    assert own_directory(part, "/elsewhere") is None


def fake_cgroup2(tmp_path: Path, node: str, own: str, controllers: str) -> tuple[str, str]:
    """A directory tree shaped like a cgroup2 mount (files the kernel would make are
    made by hand), and the mountinfo and /proc/self/cgroup lines naming it."""
    own_dir = tmp_path / own.lstrip("/")
    base = own_dir / f"schedagent-{node}"
    base.mkdir(parents=True)
    (own_dir / "cgroup.controllers").write_text(controllers + "\n")
    (own_dir / "cgroup.subtree_control").write_text(controllers + "\n")
    for name in ("cgroup.procs", "cgroup.kill", "cgroup.subtree_control", "cpu.stat"):
        (base / name).write_text("")
    (base / "memory.max").write_text("max\n")
    mountinfo = f"41 31 0:38 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n"
    return mountinfo, f"0::{own}\n"


def test_a_writable_cgroup2_tree_is_found_under_the_agents_own_cgroup(tmp_path: Path) -> None:
    mountinfo, proc_cgroup = fake_cgroup2(
        tmp_path, "n1", "/system.slice/schedagent.service", "memory pids"
    )
    layout = find_layout("n1", mountinfo, proc_cgroup)
    assert layout is not None and layout.unified is not None
    assert layout.unified.base == tmp_path / "system.slice/schedagent.service/schedagent-n1"
    assert layout.unified.controllers == {"memory", "pids"}
    assert layout.source("memory") is layout.unified
    assert layout.source("cpu") is None  # not delegated: no quota here
    assert layout.unified.has("cgroup.kill") and layout.unified.has("memory.max")


def test_no_writable_hierarchy_means_no_layout(tmp_path: Path) -> None:
    # The mount point is not there to write in (as for an unprivileged agent, or
    # read-only /sys in a container): the agent falls back to process groups.
    mountinfo = f"41 31 0:38 / {tmp_path}/absent rw - cgroup2 cgroup2 rw\n"
    assert find_layout("n1", mountinfo, "0::/\n") is None
    assert find_layout("n1", HYBRID_MOUNTINFO, "") is None  # no cgroup of ours named
    containment = Containment(None)
    assert containment.refusal(Limits(memory=64 << 20)) == (
        "cannot enforce --memory (no writable memory controller) on this node"
    )
    assert containment.refusal(Limits(cpus=1.0)) is None  # a reservation only


@pytest.mark.parametrize(
    ("text", "size"),
    [("64M", 64 << 20), ("1.5G", 3 << 29), ("512k", 512 << 10), ("2GiB", 2 << 30), ("4096", 4096)],
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "64X", "-1M", "1e3"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_sizes_format_in_the_largest_exact_unit() -> None:
    assert [format_size(n) for n in (64 << 20, 3 << 29, 1536, 1 << 40, 0)] == [
        "64M",
        "1536M",
        "1536",
        "1T",
        "0",
    ]


def test_memory_limits_are_bounded() -> None:
    assert memory_limit("64M") == 64 << 20
    for bad in ("512K", 0, True, 1.5, "2P"):
        with pytest.raises(ValueError, match="memory"):
            memory_limit(bad)
