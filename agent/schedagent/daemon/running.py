"""What the worker knows of an attempt it runs: its cancel event, PID, record and output tail."""

from __future__ import annotations

import asyncio
import dataclasses

from schedagent.core import tail
from schedagent.core.model import Job
from schedagent.host.containment import JobGroup
from schedagent.host.jobunit import Resume


@dataclasses.dataclass
class RunningJob:
    """One attempt this worker runs."""

    job_id: str
    attempt: int
    cpus: float
    cancel: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    pid: int | None = None
    group: JobGroup | None = None  # its cgroup or process group, once started
    # Set when the agent, not the job, ends the attempt (the worker's reason: stopped,
    # lease lost).
    interrupted: str | None = None
    ended: bool = False  # the command has ended; its end may still be being written
    # The record as this worker last wrote it, and at which revision (0: unknown).
    record: Job | None = None
    revision: int = 0
    seq: int = 0  # the worker's count of attempts started when this one started
    taken_at: float = 0.0  # when its dispatch was taken (perf_counter): spawn latency
    # A planned restart: set, the attempt is left running for the next agent.
    detach: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # Handed over by the previous agent: where its output goes on (not started again).
    resume: Resume | None = None

    @property
    def lease(self) -> int | None:
        """The etcd lease it was started under, as its record says."""
        attempt = None if self.record is None else self.record.current_attempt()
        return None if attempt is None else attempt.lease


class OutputTail:
    """The last `limit` bytes of a job's output, kept for its record."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def kept(self) -> tail.Tail:
        """What the record keeps: at most `limit` bytes of JSON, binary output included."""
        return tail.keep(bytes(self.data), self.limit)
