"""Finds the cgroup hierarchies this agent may write, from /proc/self/{mountinfo,cgroup}."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

UNIFIED = ""  # the key of the cgroup2 hierarchy (its line in /proc/self/cgroup is "0::/path")
# What a job's cgroup is for, and the cgroup v1 controller that gives it.
V1_CONTROLLERS = {"memory": "memory", "pids": "pids", "cpu": "cpu", "io": "blkio"}
V1_HELPERS = ("cpuacct", "freezer")  # accounting and freezing where cgroup2 cannot
# blkio is not joined (a cgroup more per spawn for I/O bytes): I/O comes from cgroup2 only.
V1_WANTED = frozenset({"memory", "pids", "cpu", *V1_HELPERS})
# Super options of a v1 mount that name no controller (the rest, and name=..., make up
# its line in /proc/self/cgroup).
V1_NOT_CONTROLLERS = frozenset(
    {"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods"}
)


@dataclasses.dataclass(frozen=True)
class Mount:
    """One cgroup mount: its hierarchy's key (UNIFIED, or a v1 controller list such as
    "cpu,cpuacct" or "name=systemd"), the directory of the hierarchy it shows, and where."""

    key: str
    root: str
    point: Path


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """A hierarchy this agent writes: the directory its job cgroups go under, and what
    it gives them (controllers for v1; for cgroup2 those enabled for the jobs)."""

    key: str
    base: Path
    controllers: frozenset[str]
    # The interface files a job's cgroup here has (as its parent, the base, has them):
    # looked at once, not at every attempt.
    files: frozenset[str] = frozenset()

    def has(self, name: str) -> bool:
        return name in self.files

    @property
    def unified(self) -> bool:
        return self.key == UNIFIED


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each job's cgroups go: the cgroup2 hierarchy if writable, and a v1 one for
    each controller cgroup2 lacks here (a hybrid host has both)."""

    unified: Hierarchy | None
    v1: Mapping[str, Hierarchy]  # controller ("memory", "cpuacct", ...) -> its hierarchy

    def source(self, controller: str) -> Hierarchy | None:
        """The hierarchy that gives `controller` (cgroup2 names: memory, pids, cpu, io)."""
        if self.unified is not None and controller in self.unified.controllers:
            return self.unified
        return self.v1.get(V1_CONTROLLERS.get(controller, controller))

    def describe(self) -> str:
        parts = []
        if self.unified is not None:
            enabled = " ".join(sorted(self.unified.controllers)) or "no controllers"
            parts.append(f"cgroup2 {self.unified.base} ({enabled})")
        for name, hierarchy in sorted(self.v1.items()):
            parts.append(f"v1 {name} {hierarchy.base}")
        return "; ".join(parts)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts in a mountinfo file (proc(5)): fields 4 and 5 are the root and
    the mount point, and after the "-" come the type and the super options."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        root, point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            mounts.append(Mount(UNIFIED, root, point))
        elif fstype == "cgroup":
            names = [o for o in options if o not in V1_NOT_CONTROLLERS and "=" not in o]
            names += [o for o in options if o.startswith("name=")]
            mounts.append(Mount(",".join(sorted(names)), root, point))
    return mounts


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Each hierarchy's key (as Mount.key) -> this process's cgroup path in it."""
    paths = {}
    for line in text.splitlines():
        number, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not sep or not sep2 or not number.isdigit():
            continue
        unified = number == "0" and not controllers
        key = UNIFIED if unified else ",".join(sorted(controllers.split(",")))
        paths[key] = path
    return paths


def own_directory(mount: Mount, path: str) -> Path | None:
    """This process's cgroup directory under the mount, or None if the mount does not
    show it (a cgroup namespace or a bind mount of some other part)."""
    if mount.root == "/":
        relative = path
    elif path == mount.root or path.startswith(mount.root + "/"):
        relative = path[len(mount.root) :]
    else:
        return None
    return mount.point / relative.lstrip("/")


def find_layout(
    node: str,
    mountinfo: str,
    proc_cgroup: str,
    enable: Iterable[str] = ("memory", "pids", "cpu", "io"),
) -> Layout | None:
    """The hierarchies this agent can create job cgroups in (each under its own cgroup,
    in a directory named after the node), or None if none is writable."""
    paths = parse_proc_cgroup(proc_cgroup)
    unified: Hierarchy | None = None
    v1: dict[str, Hierarchy] = {}
    for mount in parse_mountinfo(mountinfo):
        own = own_directory(mount, paths.get(mount.key, "")) if mount.key in paths else None
        wanted = mount.key == UNIFIED or bool(set(mount.key.split(",")) & V1_WANTED)
        if own is None or not wanted:
            continue
        base = _writable_base(own, f"schedagent-{node}")
        if base is None:
            continue
        if mount.key == UNIFIED:
            enabled = _enable_controllers(own, base, enable)
            unified = Hierarchy(UNIFIED, base, enabled, _unified_files(base, enabled))
        else:
            controllers = frozenset(mount.key.split(",")) & V1_WANTED
            files = frozenset(os.listdir(base))
            for name in controllers:
                v1.setdefault(name, Hierarchy(mount.key, base, controllers, files))
    if unified is None and not v1:
        return None
    return Layout(unified, v1)


def _writable_base(own: Path, name: str) -> Path | None:
    """own/name, made if need be; None if this process may not (not root, no delegation,
    a read-only mount)."""
    base = own / name
    try:
        base.mkdir(exist_ok=True)
    except OSError as exc:
        log.debug("cannot create %s: %s", base, exc)
        return None
    if not os.access(base / "cgroup.procs", os.W_OK):
        return None
    return base


def _enable_controllers(own: Path, base: Path, wanted: Iterable[str]) -> frozenset[str]:
    """The cgroup2 controllers job cgroups under base get: those own passes down (or can
    be made to) and base can pass on. Enabling one in own's subtree_control is refused
    while own holds processes (unless it is the root), so none is forced here."""
    available = set(_words(own / "cgroup.controllers"))
    enabled = set(_words(own / "cgroup.subtree_control"))
    for controller in sorted(set(wanted) & (available - enabled)):
        with contextlib.suppress(OSError):
            (own / "cgroup.subtree_control").write_text(f"+{controller}")
            enabled.add(controller)
    passed = set()
    for controller in sorted(set(wanted) & enabled):
        try:
            (base / "cgroup.subtree_control").write_text(f"+{controller}")
            passed.add(controller)
        except OSError as exc:
            log.debug("cannot enable %s under %s: %s", controller, base, exc)
    return frozenset(passed)


def _unified_files(base: Path, enabled: frozenset[str]) -> frozenset[str]:
    """A job cgroup's files: base's core ones (cgroup.kill since Linux 5.14) and those of
    the controllers base passes down (base has them: its parent passes them to it)."""
    names = os.listdir(base)
    core = {n for n in names if n.startswith("cgroup.")} | ({"cpu.stat"} & set(names))
    return frozenset(core | {n for n in names if n.split(".")[0] in enabled})


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def discover(node: str, proc: Path = Path("/proc/self")) -> Layout | None:
    """find_layout for this process; None if /proc cannot be read."""
    try:
        mountinfo = (proc / "mountinfo").read_text()
        proc_cgroup = (proc / "cgroup").read_text()
    except OSError as exc:
        log.info("cannot read %s: %s", proc, exc)
        return None
    return find_layout(node, mountinfo, proc_cgroup)
