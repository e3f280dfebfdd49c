"""What the web console asks of the cluster, and its NATS implementation (ctl/client.py).

Pages talk to a `Cluster`, never to NATS: the unit tests render them against an
in-memory fake of the same interface. Everything the console submits or cancels is
signed here, on the admin host, with the operator's key.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Protocol

import nats.errors

from schedagent.core.signing import SigningKey
from schedagent.ctl.client import Client, CtlError, Record, field, reason_of
from schedagent.ctl.fleetruns import fleet_list
from schedagent.ctl.follow import CATCH_UP_IDLE, OutputReader
from schedagent.ctl.schedules import signed_action

# A job page shows at most this much of the output stream; older output is cut.
MAX_OUTPUT_CHARS = 256 * 1024


@dataclasses.dataclass
class Output:
    """A job's output from stream sequence `after` on: chunks (stream, text) and where
    the next read continues."""

    chunks: list[tuple[str, str]]
    next_seq: int
    cut: bool = False


class Cluster(Protocol):
    """The cluster as the console's pages see it."""

    @property
    def signed(self) -> bool:
        """Whether what the console submits and cancels carries the operator's signature."""
        ...

    async def nodes(self) -> list[Record]: ...

    async def leader(self) -> Record | None: ...

    async def list_jobs(self, state: str | None, limit: int, before: str | None) -> Record: ...

    async def get(self, job_id: str) -> Record: ...

    async def output(self, job_id: str, after: int) -> Output: ...

    async def submit(self, spec: Record) -> Record: ...

    async def cancel(self, job_id: str) -> Record: ...

    async def schedules(self) -> list[Record]: ...

    async def schedule(self, name: str) -> Record: ...

    async def schedule_action(self, action: str, name: str) -> Record: ...

    async def fleet_list(self, limit: int, before: str | None) -> Record: ...

    async def fleet_get(self, group_id: str) -> Record: ...

    async def fleet_cancel(self, group_id: str) -> Record: ...


class NatsCluster:
    """The console's cluster: one long-lived schedctl client, the operator's key."""

    def __init__(self, client: Client, key: SigningKey | None) -> None:
        self.client = client
        self.key = key

    @property
    def signed(self) -> bool:
        return self.key is not None

    async def nodes(self) -> list[Record]:
        return list(field(await self.client.call("nodes"), "nodes", list))

    async def leader(self) -> Record | None:
        found = (await self.client.call("leader")).get("leader")
        return found if isinstance(found, dict) else None

    async def list_jobs(self, state: str | None, limit: int, before: str | None) -> Record:
        return await self.client.call("list", {"state": state, "limit": limit, "before": before})

    async def get(self, job_id: str) -> Record:
        return await self.client.call("get", {"id": job_id})

    async def output(self, job_id: str, after: int) -> Output:
        last = await self.client.last_seq("output", job_id)
        if last is None or last <= after:
            return Output([], after)
        chunks: list[tuple[str, str]] = []
        reader = OutputReader(job_id, lambda stream, data: chunks.append((stream, data)))
        reader.last_seq = after
        sub = None
        try:
            sub = await self.client.subscribe("output", job_id, reader.on_msg, after + 1)
            await reader.wait(lambda: reader.last_seq >= last, CATCH_UP_IDLE)
        except (nats.errors.Error, TimeoutError) as exc:
            raise CtlError(f"cannot read the output stream: {reason_of(exc)}") from None
        finally:
            if sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        return _capped(chunks, reader.last_seq)

    async def submit(self, spec: Record) -> Record:
        if self.key is not None:
            spec = {**spec, "signature": self.key.sign(spec).to_dict()}
        return dict(field(await self.client.submit(spec), "job", dict))

    async def cancel(self, job_id: str) -> Record:
        request: Record = {"id": job_id}
        if self.key is not None:
            request["signature"] = self.key.sign_cancel(job_id).to_dict()
        return dict(field(await self.client.call("cancel", request), "job", dict))

    async def schedules(self) -> list[Record]:
        return list(field(await self.client.call("schedule_list"), "schedules", list))

    async def schedule(self, name: str) -> Record:
        return await self.client.call("schedule_get", {"name": name})

    async def schedule_action(self, action: str, name: str) -> Record:
        if self.key is None:
            raise CtlError("schedules are always signed: no operator key (see schedctl keygen)")
        return await signed_action(self.client, action, name, self.key)

    async def fleet_list(self, limit: int, before: str | None) -> Record:
        return await fleet_list(self.client, limit, before)

    async def fleet_get(self, group_id: str) -> Record:
        return await self.client.call("fleet_get", {"id": group_id})

    async def fleet_cancel(self, group_id: str) -> Record:
        if self.key is None:
            raise CtlError("fleet runs are always signed: no operator key (see schedctl keygen)")
        signature = self.key.sign_group_cancel(group_id).to_dict()
        return await self.client.call("fleet_cancel", {"id": group_id, "signature": signature})


def _capped(chunks: list[tuple[str, str]], next_seq: int) -> Output:
    """The newest MAX_OUTPUT_CHARS of the chunks: a page stays small whatever a job wrote."""
    total, kept = 0, []
    for stream, data in reversed(chunks):
        if total + len(data) > MAX_OUTPUT_CHARS:
            kept.append((stream, data[len(data) - (MAX_OUTPUT_CHARS - total) :]))
            return Output(kept[::-1], next_seq, cut=True)
        total += len(data)
        kept.append((stream, data))
    return Output(kept[::-1], next_seq)
