"""How long schedctl waits for a job: --wait-timeout, and giving up on an unplaceable one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from schedagent.ctl.client import CtlError, Record
from schedagent.ctl.exits import EXIT_WAIT_TIMEOUT
from schedagent.ctl.params import Duration

# Without --wait-timeout, a job no node could take as the cluster stands (the agent's
# `unplaceable` in the get reply) is given up on after this long: a label no node has
# would otherwise make `submit --wait` hang forever.
UNPLACEABLE_GRACE = 60.0


class WaitGaveUp(CtlError):
    """The wait's bound passed before the job was final; the job is left as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_WAIT_TIMEOUT)


def wait_timeout_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--wait-timeout",
        type=Duration(zero=True),
        help="Give up waiting after DURATION (30s, 5m, 2h; exit 244, the job is left "
        "as it is); 0 waits as long as it takes. Default: as long as the job runs, but "
        f"at most {UNPLACEABLE_GRACE:g}s while no node could take it.",
    )(command)


class WaitLimit:
    """The bounds of one wait, judged on each `get` reply while the job is not final.

    timeout None: no bound on the whole wait, and an unplaceable job is given up on
    after UNPLACEABLE_GRACE; a timeout T bounds both (0: no bound at all).
    """

    def __init__(
        self, timeout: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.started = clock()
        self.total = timeout or None
        self.unplaceable = UNPLACEABLE_GRACE if timeout is None else self.total
        self.unplaceable_since: float | None = None

    def check(self, job_id: str, reply: Record | None) -> None:
        """Raise WaitGaveUp if a bound passed; reply None: no answer this time."""
        now = self.clock()
        record = {} if reply is None else reply.get("job") or {}
        state = str(record.get("state") or "unknown")
        reason = None if reply is None else reply.get("pending_reason")
        if reply is not None:
            stuck = state == "PENDING" and reply.get("unplaceable") is True
            if not stuck:
                self.unplaceable_since = None
            elif self.unplaceable_since is None:
                self.unplaceable_since = now
        why = f"still {state}" + (f": {reason}" if reason else "")
        hint = f" (schedctl explain {job_id})" if state == "PENDING" else ""
        if self.total is not None and now - self.started >= self.total:
            raise WaitGaveUp(f"gave up waiting for job {job_id} after {self.total:g}s: {why}{hint}")
        since = self.unplaceable_since
        if self.unplaceable is not None and since is not None and now - since >= self.unplaceable:
            raise WaitGaveUp(
                f"gave up waiting for job {job_id}: unplaceable for {now - since:.0f}s: {why}{hint}"
            )

    def pause(self, most: float) -> float:
        """How long to sleep before the next look: at most `most`, and not past a bound."""
        now = self.clock()
        ends = []
        if self.total is not None:
            ends.append(self.started + self.total)
        if self.unplaceable is not None and self.unplaceable_since is not None:
            ends.append(self.unplaceable_since + self.unplaceable)
        return max(0.05, min([most, *(end - now for end in ends)]))
