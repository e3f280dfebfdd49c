"""The console as one request handler: who may ask, what a refused or failed request sees.

A page on another site can make the operator's browser send requests here, so every
request must name this server in its Host header (a rebound DNS name does not) and a
state-changing one must come from its own pages: an Origin, if sent, of this server,
and the per-process token that only this server's forms carry.
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import secrets
from collections.abc import Collection
from pathlib import Path

from schedagent.ctl.client import ApiError, CtlError, NoAgentError
from schedagent.ctl.ui.console import Cluster
from schedagent.ctl.ui.http import HttpError, Request, Response, text_response
from schedagent.ctl.ui.pages import Pages
from schedagent.ctl.ui.render import environment
from schedagent.errors import SpecError

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
SAFE_METHODS = frozenset({"GET", "HEAD"})
# Scripts and styles only from here: a record that slipped through unescaped runs nothing.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _static_files() -> dict[str, Response]:
    """The shipped CSS and script, read once: no path from a request reaches the disk."""
    files = {}
    for path in STATIC.iterdir():
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files[f"/static/{path.name}"] = Response(200, path.read_bytes(), f"{kind}; charset=utf-8")
    return files


class Console:
    """Answers one request: the checks, then a page, then the headers every answer has."""

    def __init__(
        self,
        cluster: Cluster,
        allowed_hosts: Collection[str] = (),
        cluster_name: str = "",
        csrf_token: str | None = None,
    ) -> None:
        """An empty allowed_hosts accepts any Host header (TLS binds)."""
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)
        self.allowed_hosts = frozenset(allowed_hosts)
        pages = Pages(cluster, environment(), self.csrf_token, cluster_name)
        self.pages = pages
        self.router = pages.router()
        self.static = _static_files()

    async def __call__(self, request: Request) -> Response:
        try:
            self.check(request)
            response = await self._answer(request)
        except HttpError as exc:
            response = text_response(exc.status, f"{exc}\n")
        response.headers.update(HEADERS)
        return response

    def check(self, request: Request) -> None:
        """Raise HttpError 403 unless the request may come from this server's own pages."""
        host = request.headers.get("host", "")
        name, _, port = host.rpartition(":")
        ours = name in self.allowed_hosts and port == str(request.local_port)
        if self.allowed_hosts and not ours:
            raise _refused(f"Host {host!r} is not this server")
        if request.method in SAFE_METHODS:
            return
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.scheme}://{host}":
            raise _refused(f"Origin {origin!r} is not this server")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise _refused("a request from another site")
        token = request.form().get("csrf", "")
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            raise _refused("the form's token is missing or stale (reload the page)")

    async def _answer(self, request: Request) -> Response:
        static = self.static.get(request.path)
        if static is not None and request.method in SAFE_METHODS:
            return Response(static.status, static.body, static.content_type, {})
        handler = self.router.find(request)
        try:
            return await handler(request)
        except ApiError as exc:
            status = 404 if exc.code == "not_found" else 409
            return self._error(request, status, "The cluster refused", str(exc))
        except NoAgentError as exc:
            return self._error(request, 503, "No agent answered", str(exc))
        except CtlError as exc:
            return self._error(request, 502, "Cluster error", str(exc))
        except SpecError as exc:
            return self._error(request, 400, "Bad request", str(exc))
        except HttpError:
            raise  # a handler's own answer (a bad query: 400), sent as it is
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return self._error(request, 500, "Console error", "see schedctl ui's output")

    def _error(self, request: Request, status: int, heading: str, message: str) -> Response:
        back = "/jobs" if request.method in SAFE_METHODS else request.path.rsplit("/", 1)[0]
        return self.pages.render(
            request, "error.html", status, heading=heading, message=message, back=back
        )


def _refused(reason: str) -> HttpError:
    log.warning("refused a request: %s", reason)
    return HttpError(403, f"refused: {reason}")
