"""schedctl's exit status: a job's status passes through; schedctl's own failures are 240-245.

A script must tell "the job exited 3" from "no agent answered": under --wait (and
`wait`, `logs -f`) schedctl exits with the job's status, which is whatever the job's
command chose (1-255), 124 (timed out), 130 (canceled) or 128+N (killed by signal N,
at most 192). schedctl's own failures therefore use codes from a band above every
status schedagent itself makes, the same for every command, listed in EPILOG.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import IO, Any, NoReturn

import click

EXIT_OK = 0
EXIT_ERROR = 240  # the agent refused the request (ok:false), or another error
EXIT_USAGE = 241  # bad command-line arguments (click's own 2 would pass for a job's)
EXIT_NO_CLUSTER = 242  # NATS unreachable, or no agent (or no leader) answered in time
EXIT_NOT_FOUND = 243  # the job, schedule or node does not exist
EXIT_WAIT_TIMEOUT = 244  # --wait-timeout passed, or the job stayed unplaceable
# A fleet run's status under `run --wait` (and `status GROUP` once ended).
EXIT_HOSTS_FAILED = 6  # a host failed, timed out or was canceled
EXIT_HOSTS_MISSED = 7  # none failed, but a host was unreachable or skipped
# A job's statuses: SUCCEEDED 0, TIMED_OUT 124, CANCELED 130, else its exit code.
EXIT_TIMED_OUT = 124
EXIT_CANCELED = 130
SIGNAL_BASE = 128
OWN_CODES = range(EXIT_ERROR, EXIT_WAIT_TIMEOUT + 1)

EPILOG = """\b
Exit status:
  0    success (under --wait, wait and logs -f: the job SUCCEEDED)
  240  the agent refused the request (ok:false) or another error
  241  bad command-line arguments
  242  NATS unreachable, or no agent (for explain: no leader) answered in time
  243  the job, schedule or node does not exist (not_found)
  244  --wait / wait gave up: --wait-timeout passed, or the job stayed unplaceable
Interrupted (Ctrl-C), schedctl dies of SIGINT, as a shell expects.
submit --wait, wait and logs -f exit with the job's own status otherwise:
SUCCEEDED 0, FAILED the last attempt's exit code (128+N if killed by signal N,
else 1), TIMED_OUT 124, CANCELED 130. schedagent makes no status in 240-244; only
a command that exits so itself looks like schedctl's own failure.
run --wait exits 0 if every host succeeded, 6 if a host failed, timed out or was
canceled, 7 if none did but a host was unreachable or skipped.
"""


def job_exit_code(record: dict[str, Any]) -> int:
    """The exit status that mirrors a final job's record."""
    state = record.get("state")
    if state == "SUCCEEDED":
        return EXIT_OK
    if state == "TIMED_OUT":
        return EXIT_TIMED_OUT
    if state == "CANCELED":
        return EXIT_CANCELED
    attempts = record.get("attempts") or []
    last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
    code = last.get("exit_code")
    if code is None:
        code = record.get("exit_code")
    signum = last.get("signal")
    if isinstance(code, int) and 0 < code < 256:
        return code
    if isinstance(code, int) and -128 < code < 0:
        return SIGNAL_BASE - code
    if isinstance(signum, int) and 0 < signum < 128:
        return SIGNAL_BASE + signum
    return 1


def first_failure(codes: Sequence[int]) -> int:
    """Several jobs' statuses as one: 0 if all succeeded, else the first that did not
    (in the order given), so `schedctl wait A B` fails as the first failed job did."""
    return next((code for code in codes if code != EXIT_OK), EXIT_OK)


def die_interrupted() -> NoReturn:
    """End as killed by SIGINT, so a calling shell stops its script as for any command
    (and sees no status a job could have made)."""
    sys.stdout.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    sys.exit(SIGNAL_BASE + signal.SIGINT)  # pragma: no cover - the signal ended us


class UsageFailure(click.ClickException):
    """A click failure (usage, bad parameter, unreadable file) shown as click shows it,
    with schedctl's code for it."""

    exit_code = EXIT_USAGE

    def __init__(self, cause: click.ClickException) -> None:
        super().__init__(cause.message)
        self.cause = cause

    def show(self, file: IO[Any] | None = None) -> None:
        self.cause.show(file)


class ExitCodes(click.Group):
    """The schedctl group: click's own failures (usage errors) exit EXIT_USAGE, not 2."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The group's own options are parsed here; a subcommand's under invoke.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            raise UsageFailure(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            raise UsageFailure(exc) from None
