"""A small test client for the agents' NATS API (the protocol in docs/architecture.md)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats

FINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED"}


class ApiClient:
    def __init__(self, url: str, prefix: str = "sched") -> None:
        self.url = url
        self.prefix = prefix
        self.nc: Any = None

    async def __aenter__(self) -> ApiClient:
        self.nc = await nats.connect(self.url, connect_timeout=5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def raw(self, verb: str, data: bytes, timeout: float = 10) -> dict[str, Any]:
        reply = await self.nc.request(f"{self.prefix}.api.{verb}", data, timeout=timeout)
        return dict(json.loads(reply.data))

    async def call(self, verb: str, **body: Any) -> dict[str, Any]:
        reply = await self.raw(verb, json.dumps({"v": 1, **body}).encode())
        assert reply.get("ok"), f"{verb} failed: {reply}"
        return reply

    async def submit(self, cmd: str, **spec: Any) -> str:
        reply = await self.call("submit", spec={"cmd": cmd, **spec})
        return str(reply["job"]["id"])

    async def get(self, job_id: str) -> dict[str, Any]:
        return (await self.call("get", id=job_id))["job"]  # type: ignore[no-any-return]

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

    async def wait_all(
        self, job_ids: list[str], deadline: float = 120
    ) -> dict[str, dict[str, Any]]:
        """Wait until every job is final, reading them in bulk through `list`."""
        end = time.monotonic() + deadline
        wanted = set(job_ids)
        while True:
            jobs = (await self.call("list", limit=10000))["jobs"]
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
