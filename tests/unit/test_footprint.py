"""The agent process imports what it runs on, not what schedctl or the dev tools need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from schedagent.daemon import handover
from schedagent.daemon.handover import Handover

# What `schedagent run` imports on its way to run_agent (cli.run).
AGENT_ENTRY = (
    "schedagent.cli",
    "schedagent.daemon.app",
    "schedagent.etcd.tls",
    "schedagent.host.logs",
)


def agent_modules() -> set[str]:
    code = "; ".join(f"import {name}" for name in AGENT_ENTRY)
    code += "; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out))


def test_the_agent_imports_neither_click_nor_schedctl_nor_the_dev_tools() -> None:
    modules = agent_modules()
    assert "click" not in modules
    assert not [m for m in modules if m.startswith(("schedagent.ctl", "schedagent.dev"))]


def test_an_agent_without_etcd_tls_loads_no_x509() -> None:
    # Certificates are parsed only for https:// endpoints; Ed25519 is all jobs need.
    modules = agent_modules()
    assert "cryptography.x509" not in modules
    assert "cryptography.hazmat.primitives.asymmetric.ed25519" in modules


def test_stop_post_loads_neither_the_config_nor_dbus_to_keep_the_jobs(tmp_path: Path) -> None:
    # It runs in the unit's ExecStopPost=, between the agent's end and the next start
    # (or its jobs' kill): every import is time the restart waits for.
    path = tmp_path / "handover.json"
    handover.write(path, Handover("inv", 1, 10, 1.0))
    code = (
        "import sys, json, contextlib\n"
        "from schedagent.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        f"    main(['stop-post', '--handover', {str(path)!r}])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "SERVICE_RESULT": "success", "INVOCATION_ID": "inv"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
        timeout=60,
    ).stdout  # fmt: skip
    kept, modules = out.splitlines()
    assert "left running for the next agent" in kept
    loaded = set(json.loads(modules))
    assert not loaded & {"yaml", "schedagent.config", "dbus_fast", "aetcd", "grpc", "nats"}
    assert not [m for m in loaded if m.startswith("schedagent.host")]
