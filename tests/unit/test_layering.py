"""The package's layers, read from the imports: core/ is pure, nothing points back up."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "agent" / "schedagent"
# The helpers every part may use: the config (and its value checks), the default paths,
# the error tree, owned tasks, and the stream server under the agent's metrics endpoint
# and the console.
TOP_LEVEL = {
    "schedagent",
    "schedagent.config",
    "schedagent.configvalues",
    "schedagent.paths",
    "schedagent.errors",
    "schedagent.tasks",
    "schedagent.streamserver",
}

# What each sub-package may import of schedagent besides the top-level modules.
ALLOWED = {
    "core": {"core"},
    "etcd": {"core", "etcd"},
    "nats": {"core", "nats"},
    "host": {"core", "host"},
    "daemon": {"core", "etcd", "nats", "host", "daemon"},
    "ctl": {"core", "nats", "ctl"},
    "dev": {"core", "etcd", "nats", "host", "daemon", "ctl", "dev"},
}
# core/ decides; it never does I/O itself.
CORE_FORBIDDEN = {"aetcd", "grpc", "nats", "subprocess", "socket", "asyncio", "psutil", "yaml"}


def imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the layers are read from names"
            assert node.module is not None
            yield node.module
            # `from schedagent.core import wire` imports schedagent.core.wire.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def modules(part: str) -> list[Path]:
    return sorted((PACKAGE / part).rglob("*.py"))


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_a_part_imports_only_the_parts_below_it(part: str) -> None:
    wrong = []
    for path in modules(part):
        for name in imports(path):
            if not name.startswith("schedagent.") or name in TOP_LEVEL:
                continue
            sub = name.split(".")[1]
            if f"schedagent.{sub}" in TOP_LEVEL or not (PACKAGE / sub).is_dir():
                continue
            if sub not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_core_does_no_io() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules("core")
        for name in imports(path)
        if name.split(".")[0] in CORE_FORBIDDEN
    ]
    assert not wrong, "\n".join(wrong)


def test_every_module_is_in_a_part_or_a_known_top_level_one() -> None:
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "cli"}
    assert {f"schedagent.{name}" for name in loose} <= TOP_LEVEL
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        ALLOWED
    )


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    # The test above must be able to fail: an import it forbids is found.
    bad = tmp_path / "bad.py"
    bad.write_text("import subprocess\nfrom schedagent.etcd import store\n")
    found = set(imports(bad))
    assert {"subprocess", "schedagent.etcd", "schedagent.etcd.store"} <= found
