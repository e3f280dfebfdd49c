"""schedctl and SIGPIPE: it dies quietly when stdout's reader goes away (`| head`), and
only then. A NATS server that refuses the password over TLS closes the connection while
schedctl may still be writing to it; that SIGPIPE used to kill schedctl silently (exit
141, about one run in twenty) instead of letting it say why and exit 3."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedagent.ctl.exits import EXIT_NO_CLUSTER
from schedagent.dev.procs import NATS_BIN, ManagedProcess, free_port, wait_for

SCHEDCTL = str(Path(sys.executable).parent / "schedctl")
# A SIGPIPE delivered to schedctl's own handler, then a line on stdout if it survived.
RAISE_SIGPIPE = (
    "import os, signal\n"
    "from schedagent.ctl import main as ctl\n"
    "signal.signal(signal.SIGPIPE, ctl._on_sigpipe)\n"
    "os.kill(os.getpid(), signal.SIGPIPE)\n"
    "print('alive', flush=True)\n"
)


def test_a_sigpipe_while_stdout_is_read_is_survived() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RAISE_SIGPIPE], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (0, "alive\n"), result.stderr


def test_a_sigpipe_after_stdout_lost_its_reader_kills_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-c", RAISE_SIGPIPE],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (-13, b"")


def test_schedctl_help_into_a_closed_pipe_dies_of_sigpipe() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [SCHEDCTL, "--help"], stdout=write_end, stderr=subprocess.PIPE, timeout=30
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (-13, b""), result.stderr


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def tls_nats_with_password(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if not os.access(NATS_BIN, os.X_OK):
        pytest.fail(f"{NATS_BIN} is not installed; run scripts/setup", pytrace=False)
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
    )
    key, csr, cert = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", str(key), "-out", str(csr), "-subj", "/CN=nats"),
    )
    ext = tmp_path / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key)),
        *("-set_serial", "1", "-days", "2", "-extfile", str(ext), "-out", str(cert)),
    )
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f'host: "127.0.0.1"\nport: {port}\n'
        f'tls {{ cert_file: "{cert}"\n key_file: "{key}"\n timeout: 2 }}\n'
        'authorization { users = [ {user: "schedctl", password: "right"} ] }\n'
    )

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                return b'"tls_required":true' in sock.recv(4096)
        except OSError:
            return False

    with ManagedProcess("nats", [NATS_BIN, "-c", str(config)], tmp_path / "nats.log"):
        wait_for(listening, 20, "nats-server with TLS")
        yield port, ca


@pytest.mark.slow
def test_a_password_refused_over_tls_is_exit_status_3_every_time(
    tls_nats_with_password: tuple[int, Path],
) -> None:
    port, ca = tls_nats_with_password
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDCTL_")}
    env.update(SCHEDCTL_NATS_CA=str(ca), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    url = f"tls://schedctl:wrong@127.0.0.1:{port}"
    for _ in range(30):
        result = subprocess.run(
            [SCHEDCTL, "--nats", url, "--timeout", "5", "nodes"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == EXIT_NO_CLUSTER, (result.returncode, result.stderr)
        assert "Authorization Violation" in result.stderr, result.stderr
