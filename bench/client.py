"""The benchmark's client: submits over the API and sees state changes as events arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import nats

from schedagent.dev.cluster import harness_key

FINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED"}


class BenchClient:
    """Follows every job's events on one core subscription, so waiting costs no polling."""

    def __init__(self, url: str, prefix: str = "sched") -> None:
        self.url = url
        self.prefix = prefix
        self.nc: Any = None
        self.seen: dict[str, dict[str, float]] = {}  # job -> state -> first time seen
        self.final_at: dict[str, float] = {}  # job -> when a final state was first seen
        self.changed = asyncio.Event()

    async def __aenter__(self) -> BenchClient:
        self.nc = await nats.connect(self.url)
        await self.nc.subscribe(f"{self.prefix}.events.*", cb=self._on_event)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def _on_event(self, msg: Any) -> None:
        body = json.loads(msg.data)
        now = time.time()
        self.seen.setdefault(body["job"], {}).setdefault(body["state"], now)
        if body["state"] in FINAL:
            self.final_at.setdefault(body["job"], now)
        self.changed.set()

    async def call(self, verb: str, **body: Any) -> dict[str, Any]:
        data = json.dumps({"v": 1, **body}).encode()
        reply = json.loads(
            (await self.nc.request(f"{self.prefix}.api.{verb}", data, timeout=30)).data
        )
        if not reply.get("ok"):
            raise RuntimeError(f"{verb}: {reply}")
        return dict(reply)

    @staticmethod
    def spec(cmd: str, **fields: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {"cmd": cmd, "idempotency_key": str(uuid.uuid4()), **fields}
        # Signed, as schedctl signs: the agents run nothing else.
        spec["signature"] = harness_key()[0].sign(spec).to_dict()
        return spec

    async def submit(self, cmd: str) -> str:
        return str((await self.call("submit", spec=self.spec(cmd)))["job"]["id"])

    async def submit_batches(self, cmds: list[str], batch: int = 1000) -> list[str]:
        """Every command through `submit_many`, a batch after the other: the job ids."""
        ids: list[str] = []
        for start in range(0, len(cmds), batch):
            specs = [self.spec(cmd) for cmd in cmds[start : start + batch]]
            jobs = (await self.call("submit_many", specs=specs))["jobs"]
            refused = [job for job in jobs if "error" in job]
            if refused:
                raise RuntimeError(f"submit_many refused {len(refused)} specs: {refused[0]}")
            ids += [job["id"] for job in jobs]
        return ids

    async def submit_many(self, cmds: list[str], in_flight: int) -> list[str]:
        limit = asyncio.Semaphore(in_flight)

        async def one(cmd: str) -> str:
            async with limit:
                return await self.submit(cmd)

        return list(await asyncio.gather(*(one(c) for c in cmds)))

    async def get(self, job_id: str) -> dict[str, Any]:
        return dict((await self.call("get", id=job_id))["job"])

    async def wait_state(self, job_id: str, states: set[str], deadline: float = 120) -> float:
        """When one of states was first seen for the job (from events, or a read as fallback)."""
        end = time.monotonic() + deadline
        while True:
            times = [t for s, t in self.seen.get(job_id, {}).items() if s in states]
            if times:
                return min(times)
            if time.monotonic() > end:
                job = await self.get(job_id)
                if job["state"] in states:
                    return time.time()
                raise TimeoutError(f"job {job_id} never reached {states}: {job['state']}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)

    async def wait_one_final(self, job_id: str) -> float:
        return await self.wait_state(job_id, FINAL)

    async def wait_final(self, ids: list[str]) -> float:
        """When the last of the jobs was seen final."""
        return max([await self.wait_one_final(job_id) for job_id in ids])
