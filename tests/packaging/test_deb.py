"""The Debian package: `make deb` builds it, lintian passes it, and in a fresh bookworm
root (packaging/test-root, cached) it installs, runs, upgrades, is removed and purged.

These tests need root (debootstrap, chroot) and Debian's packaging tools (scripts/setup
installs them); they fail, not skip, without them. The root has no systemd as PID 1, as
in a container: the maintainer scripts must cope, and deb-systemd-helper still records
the unit as enabled.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from debs import Debs
from schedagent.config import AgentConfig, parse_config
from schedagent.ctl.main import cli

REPO = Path(__file__).resolve().parents[2]
CONFFILE = REPO / "packaging" / "debian" / "agent.yaml"
TOOLS = ("dpkg-buildpackage", "dh", "help2man", "lintian", "debootstrap", "chroot", "git")
VENV = "/opt/venvs/schedagent"
UNITS = ("lib/systemd/system", "usr/lib/systemd/system")
ENABLED = "etc/systemd/system/multi-user.target.wants/schedagent.service"
COMPLETIONS = (
    "usr/share/bash-completion/completions/schedctl",
    "usr/share/zsh/vendor-completions/_schedctl",
    "usr/share/fish/vendor_completions.d/schedctl.fish",
)
# What runs in the root sees none of this process's environment (venvs, PIP_*, ...).
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# Two package builds (each a whole venv) in the module fixture: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _need_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the package tests need root (debootstrap, chroot)", pytrace=False)


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(c) for c in cmd]
    proc = subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, env=env
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """The package as `make deb` builds it, and a rebuild at a higher version."""
    _need_tools()
    out = tmp_path_factory.mktemp("debs")
    debs = Debs.in_dist(out, "test1")
    debs.build(out)
    return debs


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A fresh bookworm root, removed afterwards (its base is cached as a tarball)."""
    _need_tools()
    path = tmp_path / "root"
    _run(REPO / "packaging" / "test-root", path)
    yield path
    shutil.rmtree(path)


def chroot(root: Path, *cmd: str) -> str:
    return _run("chroot", root, *cmd, env=ENV).stdout


def dpkg(root: Path, *args: str) -> None:
    proc = _run("chroot", root, "dpkg", *args, env=ENV)
    assert "warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_conffile_shows_every_key_commented_with_its_default() -> None:
    text = CONFFILE.read_text()
    assert yaml.safe_load(text) is None, "every key of the shipped agent.yaml is commented"
    # Uncomment the keys (`#key:` at the top, `#  key:` or `#  - item` below).
    keys = re.sub(r"(?m)^#([a-z_]+:( |$)|  +([a-z_]+:( |$)|- ))", r"\1", text)
    keys = re.sub(r"(?m)^labels: \{\}\n", "", keys)  # the example below it stays
    raw = yaml.safe_load(keys)
    config = parse_config(raw, str(CONFFILE))

    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(raw) == names(AgentConfig)
    for section in ("etcd", "nats", "output", "jobs", "containment", "metrics"):
        assert set(raw[section]) == names(type(getattr(config, section)))
    # The values shown are the defaults, but for the two examples.
    shown = dataclasses.replace(config, node_name="x", labels={})
    assert shown == dataclasses.replace(AgentConfig(), node_name="x")


def test_lock_pins_every_dependency_within_its_range() -> None:
    # Fast here; the build's `pip check` also catches what the dependencies need.
    lock = (REPO / "packaging" / "requirements.lock").read_text()
    pins = dict(re.findall(r"(?m)^([\w.-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", lock))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(text)
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None and req.specifier.contains(pinned), (
            f"{text}: packaging/requirements.lock has {pinned}; "
            "run .venv/bin/python packaging/lock-requirements"
        )


def test_lintian_passes_the_package(debs: Debs) -> None:
    # Every tag that remains is overridden in packaging/debian/schedagent.lintian-overrides.
    out = _run("lintian", "--fail-on", "error,warning", "--info", debs.first).stdout
    assert not re.search(r"(?m)^[EW]: ", out), out


def test_a_second_build_of_the_tree_is_identical(debs: Debs, tmp_path: Path) -> None:
    # Reproducible: the same tree built again, in another directory and minutes later,
    # gives the same bytes (the dates come from the changelog, the build path is
    # rewritten away, the lock's hashes fix every wheel).
    again = Debs.in_dist(tmp_path / "dist", "test1")
    again.check_build(debs.version, again.start_build(debs.version, tmp_path), tmp_path)
    if again.first.read_bytes() != debs.first.read_bytes():
        for name, deb in (("first", debs.first), ("again", again.first)):
            _run("dpkg-deb", "--raw-extract", deb, tmp_path / name)
        diff = subprocess.run(
            ["diff", "-rq", str(tmp_path / "first"), str(tmp_path / "again")],
            capture_output=True,
            text=True,
        )
        pytest.fail(f"two builds of one tree differ:\n{diff.stdout}{diff.stderr}")


def test_maintainer_scripts_add_the_user_enable_and_restart_the_unit(
    debs: Debs, tmp_path: Path
) -> None:
    _run("dpkg-deb", "--control", debs.first, tmp_path)
    postinst = (tmp_path / "postinst").read_text()
    # The user exists before debhelper's snippet enables the unit that runs as it.
    assert postinst.index("adduser") < postinst.index("deb-systemd-helper enable")
    # Not started at install (no cluster configured yet: a notify start would hold
    # dpkg), but a running agent is restarted by an upgrade.
    assert "deb-systemd-invoke start" not in postinst
    assert 'if [ "$1" = configure ] && [ -n "${2:-}" ]' in postinst
    assert "deb-systemd-invoke try-restart schedagent.service" in postinst, "upgrade restart"
    prerm = (tmp_path / "prerm").read_text()
    assert '[ "$1" = remove ]' in prerm and "deb-systemd-invoke stop schedagent" in prerm


def test_install_upgrade_remove_purge(debs: Debs, root: Path) -> None:
    for deb in (debs.first, debs.upgrade):
        shutil.copy(deb, root / "tmp")
    conffile = root / "etc/schedagent/agent.yaml"

    dpkg(root, "-i", f"/tmp/{debs.first.name}")
    _check_installed(root, debs.version)
    with conffile.open("a") as f:
        f.write("log_level: debug\n")

    dpkg(root, "-i", f"/tmp/{debs.upgrade.name}")
    _check_installed(root, debs.upgrade_version)
    assert conffile.read_text().endswith("log_level: debug\n"), "the local change is kept"

    dpkg(root, "--remove", "schedagent")
    status = chroot(root, "dpkg-query", "-W", "-f=${db:Status-Abbrev}", "schedagent")
    assert status.strip() == "rc"
    assert conffile.exists(), "remove keeps the configuration"
    assert not (root / "usr/bin/schedagent").exists()
    assert not (root / VENV.lstrip("/")).exists(), "prerm removes the byte-code"

    dpkg(root, "--purge", "schedagent")
    assert not (root / "etc/schedagent").exists(), "purge removes the configuration"
    assert not (root / "var/lib/schedagent").exists()
    assert not (root / ENABLED).exists()
    assert chroot(root, "getent", "passwd", "schedagent"), "the user stays (Debian policy)"


def _check_installed(root: Path, version: str) -> None:
    status = chroot(root, "dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", "schedagent")
    assert status.split() == ["ii", version]
    assert chroot(root, "schedagent", "--version").strip() == f"schedagent, version {version}"
    conf = "/etc/schedagent/agent.yaml"
    assert "OK" in chroot(root, "schedagent", "check-config", conf)
    assert "submit" in chroot(root, "schedctl", "--help")
    assert "--tls-cert" in chroot(root, "schedctl", "ui", "--help")
    # The wheels' extension modules load (they were stripped at build time).
    modules = "grpc, google._upb._message, psutil, yaml._yaml"
    chroot(root, f"{VENV}/bin/python3", "-c", f"import {modules}")

    conffiles = chroot(root, "dpkg-query", "-W", "-f=${Conffiles}", "schedagent")
    assert conf in conffiles
    user = chroot(root, "getent", "passwd", "schedagent").strip().split(":")
    assert int(user[2]) < 1000 and user[5] == "/var/lib/schedagent", user
    assert user[6] == "/usr/sbin/nologin"
    assert any((root / units / "schedagent.service").exists() for units in UNITS)
    assert (root / ENABLED).is_symlink(), "installing enables the unit"
    for completion in COMPLETIONS:
        assert (root / completion).stat().st_size > 0, completion
    man = root / "usr/share/man/man1"
    pages = {f"schedctl-{'-'.join(path)}.1.gz" for path in _subcommands(cli, ())}
    assert pages <= {page.name for page in man.iterdir()}, "a man page per subcommand"
    assert list((root / VENV.lstrip("/")).rglob("__pycache__")), "postinst byte-compiles"
    pip = list((root / VENV.lstrip("/")).glob("lib/python3*/site-packages/pip"))
    assert not pip, "no installer ships"


def _subcommands(group: click.Group, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _subcommands(command, (*path, name))


def test_installed_agent_waits_for_its_cluster_and_stops_on_sigterm(debs: Debs, root: Path) -> None:
    # No etcd or NATS answers on port 1: the agent says so and waits (rather than exit
    # and have systemd restart it in a loop); SIGTERM (systemctl stop, dpkg -r) ends it.
    shutil.copy(debs.first, root / "tmp")
    dpkg(root, "-i", f"/tmp/{debs.first.name}")
    (root / "tmp/unreachable.yaml").write_text(
        'etcd: {endpoints: ["http://127.0.0.1:1"]}\nnats: {urls: ["nats://127.0.0.1:1"]}\n'
    )
    cmd = ["chroot", "--userspec=schedagent:schedagent", str(root), "schedagent", "run"]
    agent = subprocess.Popen(
        [*cmd, "--config", "/tmp/unreachable.yaml"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert agent.stdout is not None
    try:
        first = _read_until(agent.stdout.fileno(), "127.0.0.1", deadline=time.monotonic() + 20)
        assert agent.poll() is None, f"the agent exited {agent.returncode}: {first}"
        agent.send_signal(signal.SIGTERM)
        try:
            rest, _ = agent.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM did not stop the agent waiting for its cluster: {first}")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, first + rest


def _read_until(fd: int, needle: str, deadline: float) -> str:
    """What fd gives up to needle (unbuffered); fails at the deadline or at its end."""
    seen = b""
    while needle.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            pytest.fail(f"no {needle!r} in the agent's output in time: {seen!r}")
        seen += chunk
    return seen.decode(errors="replace")
