"""The two .debs the package and end-to-end tests install: `make deb` and a higher rebuild."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHANGELOG = REPO / "packaging" / "debian" / "changelog"


@dataclasses.dataclass(frozen=True)
class Debs:
    """The package at the changelog's version, and at a higher one for upgrades."""

    version: str
    first: Path
    upgrade_version: str
    upgrade: Path

    @classmethod
    def in_dist(cls, dist: Path, suffix: str) -> Debs:
        """Where `make deb` puts both in dist; the upgrade's version is version+suffix."""
        version = changelog_version()
        upgrade = f"{version}+{suffix}"
        return cls(version, dist / _name(version), upgrade, dist / _name(upgrade))

    @property
    def versions(self) -> tuple[str, str]:
        return self.version, self.upgrade_version

    def start_build(self, version: str, work: Path) -> subprocess.Popen[bytes]:
        """`make deb VERSION=version` in the background: build tree and log in work."""
        env = {**os.environ, "DISTDIR": str(self.first.parent)}
        env["BUILDDIR"] = str(_tree(version, work))
        with _log(version, work).open("wb") as log:
            return subprocess.Popen(
                ["make", "-s", "-C", str(REPO), "deb", f"VERSION={version}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def check_build(self, version: str, build: subprocess.Popen[bytes], work: Path) -> None:
        """Wait for a build; fail with its log's tail if it failed, else drop its tree."""
        log = _log(version, work)
        assert build.wait() == 0, f"make deb VERSION={version} failed:\n{log.read_text()[-3000:]}"
        # Only the .deb is used; the tree (a whole venv) would fill the temp dir.
        shutil.rmtree(_tree(version, work))

    def build(self, work: Path) -> None:
        """Build both, one after the other."""
        for version in self.versions:
            self.check_build(version, self.start_build(version, work), work)


def changelog_version() -> str:
    """The version at the top of packaging/debian/changelog."""
    args = ["dpkg-parsechangelog", "-l", str(CHANGELOG), "-S", "Version"]
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def _name(version: str) -> str:
    return f"schedagent_{version}_amd64.deb"


def _tree(version: str, work: Path) -> Path:
    return work / f"build-{version}"


def _log(version: str, work: Path) -> Path:
    return work / f"deb-{version}.log"
