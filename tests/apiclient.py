"""A small test client for the agents' NATS API (the protocol in docs/architecture.md)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import nats
import nats.errors

from schedagent.core.signing import SigningKey
from schedagent.dev.cluster import harness_key

FINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED"}
# The status NATS sends to the inbox of a request no subscriber got.
NO_RESPONDERS = "503"


class ApiClient:
    def __init__(
        self,
        url: str,
        prefix: str = "sched",
        key: SigningKey | None = None,
        try_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        # How long one try waits before the request is resent (to another member of
        # the queue group, most likely). A test racing a frozen agent's lease asks less.
        self.try_timeout = try_timeout
        # The harness's operator key, which every test agent trusts.
        self.key = key or harness_key()[0]
        self.nc: Any = None

    async def __aenter__(self) -> ApiClient:
        self.nc = await nats.connect(self.url, connect_timeout=5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def raw(self, verb: str, data: bytes, tries: int = 8) -> dict[str, Any]:
        """One request, resent every try_timeout until an agent answers (as schedctl
        does): a frozen or cut-off agent in the queue group swallows the copies routed
        to it until NATS notices it is gone. A copy sent earlier may still be answered
        (a slow agent under load): every copy shares one inbox and the first reply wins.
        Gives up after the copies' span plus 10 s."""
        copies = max(tries, round(16 / self.try_timeout))
        end = time.monotonic() + (copies - 1) * self.try_timeout + 10
        inbox = self.nc.new_inbox()
        replies: asyncio.Queue[Any] = asyncio.Queue()
        sub = await self.nc.subscribe(inbox, cb=replies.put)
        try:
            while True:
                await self.nc.publish(f"{self.prefix}.api.{verb}", data, reply=inbox)
                reply = await _first_answer(replies, min(self.try_timeout, end - time.monotonic()))
                if reply is not None:
                    return reply
                if time.monotonic() >= end:
                    raise nats.errors.TimeoutError
        finally:
            await sub.unsubscribe()

    def signed(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The spec with this client's signature, as schedctl sends it."""
        return {**spec, "signature": self.key.sign(spec).to_dict()}

    async def call(self, verb: str, **body: Any) -> dict[str, Any]:
        if verb == "submit" and "signature" not in body.get("spec", {}):
            body["spec"] = self.signed(body["spec"])
        if verb == "cancel" and "signature" not in body:
            body["signature"] = self.key.sign_cancel(body["id"]).to_dict()
        reply = await self.raw(verb, json.dumps({"v": 1, **body}).encode())
        assert reply.get("ok"), f"{verb} failed: {reply}"
        return reply

    async def submit(self, cmd: str, **spec: Any) -> str:
        # A key makes the retries in raw() safe: a resent submit returns the same job.
        spec.setdefault("idempotency_key", str(uuid.uuid4()))
        reply = await self.call("submit", spec={"cmd": cmd, **spec})
        return str(reply["job"]["id"])

    async def get(self, job_id: str) -> dict[str, Any]:
        return (await self.call("get", id=job_id))["job"]  # type: ignore[no-any-return]

    async def leader_node(self, not_: str | None = None, deadline: float = 15) -> str:
        """The leader's node name, once there is one (other than not_)."""
        end = time.monotonic() + deadline
        while True:
            leader = (await self.call("leader"))["leader"]
            if leader is not None and leader["node"] != not_:
                return str(leader["node"])
            if time.monotonic() > end:
                raise AssertionError(f"no leader other than {not_} after {deadline}s")
            await asyncio.sleep(0.1)

    async def wait_for(
        self, job_id: str, states: set[str] | None = None, deadline: float = 30
    ) -> dict[str, Any]:
        """Poll a job until its state is in states (default: any final state)."""
        wanted = states or FINAL
        end = time.monotonic() + deadline
        while True:
            job = await self.get(job_id)
            if job["state"] in wanted:
                return job
            if time.monotonic() > end:
                raise AssertionError(f"job {job_id} still {job['state']} after {deadline}s: {job}")
            await asyncio.sleep(0.1)

    async def list_all(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every job (up to 10,000), newest first, following `next` across replies."""
        jobs: list[dict[str, Any]] = []
        before = None
        while True:
            reply = await self.call("list", state=state, limit=10000 - len(jobs), before=before)
            jobs.extend(reply["jobs"])
            before = reply["next"]
            if before is None or len(jobs) >= 10000:
                return jobs

    async def wait_all(
        self, job_ids: list[str], deadline: float = 120
    ) -> dict[str, dict[str, Any]]:
        """Wait until every job is final, reading them in bulk through `list`."""
        end = time.monotonic() + deadline
        wanted = set(job_ids)
        while True:
            jobs = await self.list_all()
            by_id = {j["id"]: j for j in jobs if j["id"] in wanted}
            if len(by_id) == len(wanted) and all(j["state"] in FINAL for j in by_id.values()):
                return by_id
            if time.monotonic() > end:
                open_jobs = [
                    j["id"] + ":" + j["state"] for j in by_id.values() if j["state"] not in FINAL
                ]
                raise AssertionError(
                    f"{len(open_jobs)} jobs not final after {deadline}s: {open_jobs[:10]}"
                )
            await asyncio.sleep(0.25)


async def _first_answer(replies: asyncio.Queue[Any], within: float) -> dict[str, Any] | None:
    """The first reply (not NATS's "no responders") within that many seconds, or None."""
    end = time.monotonic() + within
    while (left := end - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(replies.get(), left)
        except TimeoutError:
            return None
        if not (msg.headers and msg.headers.get("Status") == NO_RESPONDERS):
            return dict(json.loads(msg.data))
    return None
