"""`schedctl submit --file`: job specs as JSON lines, checked and signed here, sent in batches."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import click

from schedagent.core import wire
from schedagent.core.signing import SigningKey
from schedagent.core.sizes import parse_size
from schedagent.core.spec import parse_spec
from schedagent.ctl.client import Client, CtlError, Record
from schedagent.ctl.exits import EXIT_ERROR
from schedagent.ctl.keys import sign_spec
from schedagent.errors import SpecError

# What a line may hold: the fields of `schedctl submit`'s options.
LINE_FIELDS = (
    "cmd",
    "cpus",
    "timeout",
    "retries",
    "node",
    "labels",
    "env",
    "cwd",
    "idempotency_key",
    "user",
    "after",
    "memory",
    "tasks",
)
# Well under NATS's 1 MiB default max_payload, whatever the specs hold.
BATCH_BYTES = 512 * 1024
# `submit` options a line carries instead (as parameter names), and --wait, which
# follows one job.
FILE_EXCLUDES = (
    *(f if f != "timeout" else "job_timeout" for f in LINE_FIELDS),
    "wait",
    "wait_timeout",
)


@dataclasses.dataclass(frozen=True)
class Line:
    """One non-blank line of the file: a signed spec ready to send, or why it is not."""

    number: int
    spec: Record | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class LineResult:
    number: int
    job: str | None = None
    created: bool = False
    error: str | None = None

    def to_dict(self) -> Record:
        if self.error is not None:
            return {"line": self.number, "error": self.error}
        return {"line": self.number, "id": self.job, "created": self.created}


def read_lines(text_lines: Iterable[str], key: SigningKey | None) -> list[Line]:
    """Every non-blank line as a Line, numbered from 1."""
    lines = []
    for number, text in enumerate(text_lines, 1):
        if not text.strip():
            continue
        try:
            spec = line_spec(text)
        except SpecError as exc:
            lines.append(Line(number, error=str(exc)))
            continue
        lines.append(Line(number, spec=sign_spec(spec, key)))
    return lines


def line_spec(text: str) -> Record:
    """The spec a line describes, checked as the agent checks it (its size limits aside),
    with a fresh idempotency key if it names none; SpecError if it is not one."""
    try:
        raw: Any = json.loads(text)
    except ValueError as exc:
        raise SpecError(f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError("must be a JSON object: one job spec")
    unknown = sorted(set(raw) - set(LINE_FIELDS))
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(LINE_FIELDS)}")
    if isinstance(raw.get("memory"), str):  # "64M", as --memory takes it
        try:
            raw["memory"] = parse_size(raw["memory"])
        except ValueError as exc:
            raise SpecError(f"memory: {exc}") from None
    spec = parse_spec(raw).to_dict()
    del spec["signature"]
    if not spec["after"]:
        del spec["after"]  # an agent older than the field refuses it
    if spec["idempotency_key"] is None:
        spec["idempotency_key"] = str(uuid.uuid4())
    return spec


def batches(
    lines: Sequence[Line], count: int = wire.MAX_SUBMIT_BATCH, size: int = BATCH_BYTES
) -> Iterator[list[Line]]:
    """The lines with a spec, in order, cut into requests of at most count specs and
    about size bytes."""
    batch: list[Line] = []
    used = 0
    for line in lines:
        if line.spec is None:
            continue
        nbytes = len(json.dumps(line.spec))
        if batch and (len(batch) == count or used + nbytes > size):
            yield batch
            batch, used = [], 0
        batch.append(line)
        used += nbytes
    if batch:
        yield batch


async def submit_lines(client: Client, lines: Sequence[Line]) -> tuple[list[LineResult], int]:
    """A result per line, in line order, and the exit status a failed request calls for
    (0 if none failed). After a request fails, the lines not yet sent say so."""
    results = {line.number: LineResult(line.number, error=line.error) for line in lines}
    failure: CtlError | None = None
    for batch in batches(lines):
        if failure is None:
            try:
                submitted = await client.submit_many(
                    [line.spec for line in batch if line.spec is not None]
                )
            except CtlError as exc:
                failure = exc
        if failure is not None:
            results.update(
                (n.number, LineResult(n.number, error=f"not sent: {failure}")) for n in batch
            )
            continue
        for line, result in zip(batch, submitted, strict=True):
            results[line.number] = LineResult(line.number, result.job, result.created, result.error)
    status = 0 if failure is None else failure.exit_code
    return [results[number] for number in sorted(results)], status


def refuse_options_beside_file(ctx: click.Context) -> None:
    """A usage error if `submit --file` was also given a job's own option."""
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    for name in FILE_EXCLUDES:
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            raise click.UsageError(
                f"--file takes each job's fields from its lines, not {flags[name]}"
            )


def report(results: Sequence[LineResult], print_ids: bool) -> int:
    """Each failed line on stderr (and each job id on stdout): the exit status."""
    for result in results:
        if result.error is not None:
            click.echo(f"schedctl: line {result.number}: {result.error}", err=True)
        elif print_ids:
            click.echo(result.job)
    return EXIT_ERROR if any(result.error is not None for result in results) else 0
