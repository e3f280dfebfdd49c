"""The console's HTTP server on a real loopback socket, and `schedctl ui`'s listen checks."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from certs import make_ca, make_cert
from schedagent.ctl.main import cli
from schedagent.ctl.ui.command import is_loopback, parse_listen
from schedagent.ctl.ui.http import MAX_BODY, HttpServer
from schedagent.ctl.ui.serve import allowed_hosts
from schedagent.ctl.ui.server import Console
from uifake import FakeCluster, job_record

JOB = "0123456789abcdef0123"


async def exchange(
    port: int, raw: bytes, tls: ssl.SSLContext | None = None
) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes, read the answer to the end: status line, headers, body."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1" if tls else None
    )
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    cluster = FakeCluster(jobs=[job_record(JOB, "RUNNING", "echo <script>")])
    http = HttpServer(Console(cluster, allowed_hosts("127.0.0.1", False)), "127.0.0.1", 0)
    await http.start()
    yield http
    await http.stop()


async def test_a_page_over_the_socket(server: HttpServer) -> None:
    host = f"127.0.0.1:{server.port}"
    status, headers, body = await exchange(
        server.port, f"GET /jobs/{JOB} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    )
    assert status == "HTTP/1.1 200 OK"
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b"echo &lt;script&gt;" in body
    status, headers, body = await exchange(
        server.port, f"HEAD /jobs HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    )
    assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["content-length"]) > 0


async def test_localhost_is_this_server_but_another_port_is_not(server: HttpServer) -> None:
    ok, _, _ = await exchange(
        server.port, f"GET /jobs HTTP/1.1\r\nHost: localhost:{server.port}\r\n\r\n".encode()
    )
    refused, _, _ = await exchange(
        server.port, f"GET /jobs HTTP/1.1\r\nHost: localhost:{server.port + 1}\r\n\r\n".encode()
    )
    assert (ok, refused) == ("HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            f"POST /submit HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(),
            "HTTP/1.1 413 Request Entity Too Large",
        ),
        (
            b"POST /submit HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 411 Length Required",
        ),
    ],
)
async def test_a_bad_request_gets_a_status_and_the_server_goes_on(
    server: HttpServer, raw: bytes, status: str
) -> None:
    assert (await exchange(server.port, raw))[0] == status
    host = f"127.0.0.1:{server.port}"
    after = await exchange(server.port, f"GET /nodes HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert after[0] == "HTTP/1.1 200 OK"


async def test_an_oversized_head_is_dropped_and_the_server_goes_on(server: HttpServer) -> None:
    status, _, _ = await exchange(server.port, b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert status == ""  # nothing to tell a client that sends 20 kB of request line
    host = f"127.0.0.1:{server.port}"
    after = await exchange(server.port, f"GET /nodes HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert after[0] == "HTTP/1.1 200 OK"


async def test_tls(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "ui", ["IP:127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    http = HttpServer(Console(FakeCluster()), "127.0.0.1", 0, context)
    await http.start()
    try:
        client = ssl.create_default_context(cafile=str(ca))
        raw = f"GET /nodes HTTP/1.1\r\nHost: 127.0.0.1:{http.port}\r\n\r\n".encode()
        assert (await exchange(http.port, raw, client))[0] == "HTTP/1.1 200 OK"
        assert http.url == f"https://127.0.0.1:{http.port}/"
    finally:
        await http.stop()


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8090") == ("127.0.0.1", 8090)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert [is_loopback(h) for h in ("127.0.0.2", "::1", "localhost", "0.0.0.0", "admin")] == [
        True,
        True,
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "0.0.0.0:8090"], "is not a loopback address: give --tls-cert and --tls-key"),
        (["--listen", "192.0.2.1:8090"], "is not a loopback address"),
        (["--listen", "8090"], "'8090' is not HOST:PORT"),
        (["--tls-cert", "/x.pem"], "give both --tls-cert and --tls-key, or neither"),
        (["--tls-cert", "/nope.pem", "--tls-key", "/nope.key"], "cannot load the TLS certificate"),
    ],
)
def test_ui_refuses_an_open_or_unclear_listen_before_connecting(
    args: list[str], message: str
) -> None:
    # No NATS at this URL: the refusal comes first, as a usage error (exit 2).
    result = CliRunner().invoke(cli, ["--nats", "nats://127.0.0.1:1", "ui", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_ui_without_nats_says_so_in_one_line() -> None:
    result = CliRunner().invoke(
        cli, ["--nats", "nats://127.0.0.1:1", "--timeout", "0.5", "ui", "--listen", "127.0.0.1:0"]
    )
    assert result.exit_code == 3
    assert result.output.startswith("schedctl: cannot connect to NATS at nats://127.0.0.1:1")
