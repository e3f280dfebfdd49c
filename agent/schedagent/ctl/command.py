"""How a schedctl command runs: its settings, one connection, errors as one line, --json."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

import click

from schedagent.ctl.client import Client, CtlError, Record
from schedagent.ctl.exits import EXIT_ERROR, die_interrupted


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str
    prefix: str
    timeout: float
    ca_file: str | None = None


json_option = click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")


def print_json(reply: Record, err: bool = False) -> None:
    """Every --json prints the reply without its envelope (`v`, `ok`)."""
    body = {k: v for k, v in reply.items() if k not in ("v", "ok")}
    click.echo(json.dumps(body, indent=2, sort_keys=True), err=err)


def write_chunk(stream: str, data: str) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(data)
    out.flush()


def write_bytes(data: bytes) -> None:
    """Output as the job wrote it (a binary tail is kept as bytes, not as text)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run(work: Callable[[Client], Awaitable[int]]) -> NoReturn:
    """Run one command's coroutine on a fresh connection; map every failure to one line."""
    settings = click.get_current_context().find_object(Settings)
    if settings is None:
        raise RuntimeError("schedctl commands run under the cli group")
    try:
        code = asyncio.run(_session(settings, work))
    except CtlError as exc:
        click.echo(f"schedctl: {exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        die_interrupted()
    except BrokenPipeError:
        # Whoever read our stdout went away (`| head`); stop quietly like other tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_ERROR
    except Exception as exc:
        # The CLI promises one line on stderr, never a traceback.
        click.echo(f"schedctl: unexpected error: {type(exc).__name__}: {exc}", err=True)
        code = EXIT_ERROR
    sys.exit(code)


async def _session(settings: Settings, work: Callable[[Client], Awaitable[int]]) -> int:
    client = Client(settings.url, settings.prefix, settings.timeout, settings.ca_file)
    await client.connect()
    try:
        return await work(client)
    finally:
        await client.close()


def show(verb: str, body: Record | None, as_json: bool, render: Callable[[Record], str]) -> None:
    """One request; its reply as JSON, or rendered for people."""

    async def work(client: Client) -> int:
        reply = await client.call(verb, body)
        if as_json:
            print_json(reply)
        else:
            click.echo(render(reply))
        return 0

    run(work)
