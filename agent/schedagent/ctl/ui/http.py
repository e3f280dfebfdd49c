"""Just enough HTTP/1.1 for the console, on asyncio streams: one request per connection.

The standard library's asyncio server, as the agent's metrics endpoint uses
(daemon/metrics_http.py), rather than aiohttp: nats-py imports aiohttp whenever it is
installed, which would cost every agent and every schedctl command 8 MiB and 0.2 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from schedagent.streamserver import StreamServer

MAX_HEAD = 16 * 1024
MAX_BODY = 256 * 1024
# For the request to arrive; answering it waits on the cluster, whose calls time out.
READ_TIMEOUT = 10.0


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes = b""
    scheme: str = "http"
    local_port: int = 0
    params: dict[str, str] = dataclasses.field(default_factory=dict)

    def form(self) -> dict[str, str]:
        """An application/x-www-form-urlencoded body; the first value of each name."""
        fields = urllib.parse.parse_qsl(self.body.decode("utf-8", "replace"), True)
        return _first(fields)


@dataclasses.dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class HttpError(Exception):
    """A request this server answers with a status and a line of text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _first(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out


def redirect(location: str) -> Response:
    """303 See Other: the browser GETs the location (a reload does not post again)."""
    return Response(303, b"", "text/plain", {"Location": location})


def json_response(body: Any) -> Response:
    return Response(200, json.dumps(body).encode(), "application/json")


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Handlers by method and path pattern (a regex; its named groups become params)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern + r"\Z"), handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return register

    def find(self, request: Request) -> Handler:
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if method == request.method or (method == "GET" and request.method == "HEAD"):
                request.params = match.groupdict()
                return handler
            allowed = True
        if allowed:
            raise HttpError(405, "method not allowed")
        raise HttpError(404, f"no page {request.path}")


async def read_request(reader: asyncio.StreamReader, scheme: str, port: int) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ")
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(411, "send a Content-Length")
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY:
        raise HttpError(413, f"a body is at most {MAX_BODY} bytes")
    body = await reader.readexactly(int(length)) if int(length) else b""
    url = urllib.parse.urlsplit(target)
    query = _first(urllib.parse.parse_qsl(url.query, True))
    path = urllib.parse.unquote(url.path)
    return Request(method, path, query, headers, body, scheme, port)


def encode(response: Response, head_only: bool) -> bytes:
    reason = HTTPStatus(response.status).phrase
    headers = {
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Connection": "close",
        **response.headers,
    }
    lines = [f"HTTP/1.1 {response.status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (
        b"" if head_only else response.body
    )


class HttpServer(StreamServer):
    """Serves `answer` on host:port (TLS with a context)."""

    def __init__(
        self, answer: Handler, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(self._exchange, host, port, limit=MAX_HEAD, tls=tls)
        self.answer = answer

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}/"

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        scheme = "https" if self.tls else "http"
        method = "GET"
        try:
            request = await asyncio.wait_for(read_request(reader, scheme, self.port), READ_TIMEOUT)
            method = request.method
            response = await self.answer(request)
        except HttpError as exc:
            response = text_response(exc.status, f"{exc}\n")
        writer.write(encode(response, head_only=method == "HEAD"))
        await writer.drain()
