"""The agent process imports what it runs on, not what schedctl or the dev tools need."""

from __future__ import annotations

import json
import subprocess
import sys

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
