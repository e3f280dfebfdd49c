"""`schedctl ui`: serve the console until interrupted, on loopback unless given TLS files."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import sys

import click

from schedagent.ctl.client import CtlError
from schedagent.ctl.command import Settings
from schedagent.ctl.keys import find_key

DEFAULT_LISTEN = "127.0.0.1:8090"


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT as (host, port); a click usage error if it is neither."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--listen")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if (cert is None) != (key is None):
        raise click.UsageError("give both --tls-cert and --tls-key, or neither")
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the TLS certificate and key: {exc}") from None
    return context


@click.command()
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False), help="Serve HTTPS with this certificate."
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="The certificate's private key.")
@click.pass_context
def ui(ctx: click.Context, listen: str, tls_cert: str | None, tls_key: str | None) -> None:
    """Serve a web console for the cluster (nodes, jobs, output, schedules, submit).

    It talks to the cluster like the other commands, with your NATS credentials, and
    signs what it submits and cancels with your operator key here. It listens on
    loopback only, unless given --tls-cert and --tls-key.
    """
    host, port = parse_listen(listen)
    context = tls_context(tls_cert, tls_key)
    if context is None and not is_loopback(host):
        raise click.UsageError(
            f"--listen {listen} is not a loopback address: give --tls-cert and --tls-key"
        )
    settings = ctx.find_object(Settings)
    assert settings is not None  # ui runs under the cli group
    key = find_key(ctx.meta.get("schedctl.key_path"))
    # Imported here: aiohttp and Jinja2 cost every other schedctl command 0.1 s to load.
    from schedagent.ctl.ui.serve import serve

    try:
        asyncio.run(serve(settings, key, host, port, context))
    except CtlError as exc:
        click.echo(f"schedctl: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        click.echo(f"schedctl: cannot listen on {listen}: {exc.strerror or exc}", err=True)
        sys.exit(1)
