"""The `submit_many` API verb: each spec checked on its own, the good ones created together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from schedagent.core import wire
from schedagent.core.model import Job, JobSpec
from schedagent.daemon import parents
from schedagent.daemon.gate import audit
from schedagent.errors import SpecError
from schedagent.etcd.jobstore import JobStore
from schedagent.nats.bus import Bus

log = logging.getLogger(__name__)

# Signature checks are CPU work: let the loop breathe between groups of them.
CHECKS_PER_YIELD = 64

# A valid spec and the key id that signed it, or SpecError (as the `submit` verb checks).
SpecCheck = Callable[[object], tuple[JobSpec, str | None]]
Accepted = tuple[int, JobSpec, str | None]  # (index in the request, spec, its signer)


class SubmitMany:
    """Handles one submit_many request; a bad spec is an error for its index only."""

    def __init__(self, check: SpecCheck, jobs: JobStore, bus: Bus) -> None:
        self.check = check
        self.jobs = jobs
        self.bus = bus

    async def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        raw_specs = wire.parse_submit_many(req)
        results: dict[int, wire.Submitted] = {}
        accepted: list[Accepted] = []
        for index, raw in enumerate(raw_specs):
            try:
                spec, signer = self.check(raw)
            except SpecError as exc:
                results[index] = wire.Submitted(index, error=str(exc))
            else:
                accepted.append((index, spec, signer))
            if index % CHECKS_PER_YIELD == CHECKS_PER_YIELD - 1:
                await asyncio.sleep(0)
        accepted = await self._known_parents(accepted, results)
        made = await self.jobs.create_many([spec for _, spec, _ in accepted])
        for (index, _, signer), (job, created) in zip(accepted, made, strict=True):
            results[index] = wire.Submitted(index, job.id, created)
            await self._announce(job, created, signer)
        refused = len(raw_specs) - len(accepted)
        if refused:
            log.info("submit_many: %d of %d specs refused", refused, len(raw_specs))
        return wire.submitted([results[index] for index in range(len(raw_specs))])

    async def _known_parents(
        self, accepted: list[Accepted], results: dict[int, wire.Submitted]
    ) -> list[Accepted]:
        """The accepted specs whose parents all exist; the others get their error."""
        unknown = await parents.unknown_parents(self.jobs, [spec for _, spec, _ in accepted])
        for (index, _, _), error in zip(accepted, unknown, strict=True):
            if error is not None:
                results[index] = wire.Submitted(index, error=error)
        return [a for a, error in zip(accepted, unknown, strict=True) if error is None]

    async def _announce(self, job: Job, created: bool, signer: str | None) -> None:
        if created:
            log.info("job %s submitted: %s", job.id, job.spec.cmd[:200], extra={"job_id": job.id})
            await self.bus.publish_event(job)
        audit("submit", job.id, signer, "accepted" if created else "same idempotency key")
