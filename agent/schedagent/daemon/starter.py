"""A dispatch's start at the worker: the gate's checks, then one fenced transaction.

The leader sends the record it wrote and the revision it wrote it at, so in the common
case the worker reads nothing: its start transaction compares that revision and those
exact bytes (a dispatch is no proof of what etcd holds), claims the signature's nonce
and writes RUNNING, all at once. When a compare fails, the same round trip reads the
record and the nonce back, and the worker decides again on what etcd holds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from schedagent.core import transitions, wire
from schedagent.core.model import Job
from schedagent.daemon.gate import Admission, Claim, Gate, Refused
from schedagent.errors import NotFoundError
from schedagent.etcd.batcher import TxnBatcher
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import KV, ValueIs

log = logging.getLogger(__name__)

# Compare failures in a row before the dispatch is put back for a later look.
MAX_TRIES = 5


@dataclasses.dataclass(frozen=True)
class Seen:
    """A version of the record: read from etcd (raw None) or as a dispatch carried it."""

    job: Job
    revision: int
    raw: bytes | None = None


@dataclasses.dataclass(frozen=True)
class Started:
    job: Job
    revision: int
    signer: str | None


@dataclasses.dataclass(frozen=True)
class Stale:
    """Not this node's attempt to start (any more): job is what etcd holds, if anything."""

    job: Job | None


@dataclasses.dataclass(frozen=True)
class Refusal:
    job: Job
    reason: str


@dataclasses.dataclass(frozen=True)
class Busy:
    """The record kept changing under the start: look again later."""


Outcome = Started | Stale | Refusal | Busy


class Starter:
    def __init__(
        self, node: str, jobs: JobStore, gate: Gate, batcher: TxnBatcher, lease: Callable[[], int]
    ) -> None:
        self.node = node
        self.jobs = jobs
        self.gate = gate
        self.batcher = batcher
        self.lease = lease

    async def start(self, dispatch: wire.Dispatch) -> Outcome:
        """Start the dispatched attempt in etcd (RUNNING, fenced) if it is still ours."""
        seen = _carried(dispatch) or await self._read(dispatch.job)
        held: bool | None = None  # whether the nonce is this job's already; None: guess
        for _ in range(MAX_TRIES):
            if seen is None:
                return Stale(None)
            now, lease = time.time(), self.lease()
            started = transitions.start(seen.job.clone(), self.node, dispatch.attempt, now, lease)
            if started is None:  # not this node's attempt (any more)
                if seen.raw is None:
                    return Stale(seen.job)
                seen = await self._read(dispatch.job)  # the dispatch says otherwise: look
                continue
            try:
                admission = self.gate.check(seen.job, now)
            except Refused as exc:
                if seen.raw is not None:  # judged on what etcd holds, not on a dispatch
                    seen = await self._read(dispatch.job)
                    continue
                return Refusal(seen.job, str(exc))
            job = seen.job
            try:
                outcome, seen, held = await self._try(seen, started, admission, held)
            except Refused as exc:
                return Refusal(job, str(exc))
            if outcome is not None:
                return outcome
        return Busy()

    async def _try(
        self, seen: Seen, started: Job, admission: Admission, held: bool | None
    ) -> tuple[Started | None, Seen | None, bool | None]:
        """One start transaction of the record seen, as started: (Started, ...) or
        (None, the version to try next, whether the nonce is ours). Refused if the
        record is as seen and its nonce another job's."""
        job, nonce = seen.job, admission.nonce
        claim = Claim([], [])
        if nonce is not None:
            ours = _earlier_start(job) if held is None else held
            claim = await self.gate.nonce_claim(nonce, job.id, ours)
        compares = list(claim.compares)
        if seen.raw is not None:
            compares.append(ValueIs(self.jobs.keys.job(job.id), seen.raw))
        reads = [] if nonce is None else [nonce]
        item = self.jobs.guarded(started, seen.revision, compares, claim.ops, reads)
        written, found = await self.batcher.run(item)
        if written:
            return Started(started, written, admission.signer), None, None
        if not _unchanged(found[0], seen):
            now = self.jobs.found(found)
            return None, None if now is None else Seen(*now), None
        # The record is as seen: the nonce is what failed its compare.
        return None, seen, _nonce_is_ours(found[-1], job, admission.replayed)

    async def _read(self, job_id: str) -> Seen | None:
        try:
            job, revision = await self.jobs.get(job_id)
        except NotFoundError:
            return None
        return Seen(job, revision)


def _carried(dispatch: wire.Dispatch) -> Seen | None:
    """The record a dispatch carries, if it is a record of that job."""
    if dispatch.record is None:
        return None
    try:
        job = Job.from_json(dispatch.record)
    except ValueError as exc:
        log.warning("dispatch of job %s carries a malformed record (%s)", dispatch.job, exc)
        return None
    if job.id != dispatch.job:
        log.warning("dispatch of job %s carries the record of job %s", dispatch.job, job.id)
        return None
    return Seen(job, dispatch.revision, dispatch.record)


def _unchanged(live: KV | None, seen: Seen) -> bool:
    """Whether etcd's live record is the one the start was compared with."""
    if live is None or live.mod_revision != seen.revision:
        return False
    return seen.raw is None or live.value == seen.raw


def _nonce_is_ours(held: KV | None, job: Job, replayed: str) -> bool:
    """Whether the nonce is this job's (False: free to claim); Refused if another's."""
    if held is None:
        return False  # never claimed, or its lease expired: claim it anew
    if held.value == job.id.encode():
        return True
    raise Refused(replayed)


def _earlier_start(job: Job) -> bool:
    """An earlier attempt of this job started: then the nonce is likely its already."""
    return any(a.started_at is not None and a.n < job.attempt for a in job.attempts)
