"""What a job record and a NATS body cost to encode and decode: the stdlib json of today
against orjson and msgspec (which must be importable: they are not dependencies).

`python bench/encoding_bench.py`: microseconds per operation on a finished job's record
(signed spec, one attempt, as the worker writes it) and on an event body; then what a
job's record traffic costs each way (4 writes encoded, 5 reads decoded: the leader's
watch sees every write, the worker reads the record once).
"""

from __future__ import annotations

import json
import sys
import timeit
from collections.abc import Callable
from typing import Any

from schedagent.core import wire
from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.core.signing import SigningKey

try:
    import msgspec
except ImportError:
    msgspec = None

if msgspec is not None:
    # The record as msgspec would hold it: the shape of core/model.py's dataclasses.

    class SpecS(msgspec.Struct):
        cmd: str
        cpus: float = 1.0
        timeout: float | None = None
        retries: int = 0
        env: dict[str, str] = {}
        cwd: str | None = None
        node: str | None = None
        labels: dict[str, str] = {}
        idempotency_key: str | None = None
        user: str | None = None
        signature: dict[str, Any] | None = None

    class AttemptS(msgspec.Struct):
        n: int
        node: str
        assigned_at: float
        started_at: float | None = None
        ended_at: float | None = None
        state: str | None = None
        exit_code: int | None = None
        signal: int | None = None
        reason: str | None = None
        lease: int | None = None

    class JobS(msgspec.Struct):
        id: str
        spec: SpecS
        state: str
        submitted_at: float
        attempt: int = 1
        node: str | None = None
        pid: int | None = None
        not_before: float = 0.0
        cancel_requested: bool = False
        exit_code: int | None = None
        reason: str | None = None
        output_tail: str = ""
        updated_at: float = 0.0
        attempts: list[AttemptS] = []
        v: int = 1

    class EventS(msgspec.Struct):
        job: str
        state: str
        attempt: int
        node: str | None
        exit_code: int | None
        reason: str | None
        time: float
        v: int = 1


WRITES_PER_JOB = 4  # create, assign, start, end
READS_PER_JOB = 5  # the leader's watch decodes those 4; the worker reads it once


def finished_job() -> Job:
    raw = {"cmd": "true", "idempotency_key": "0b9f8c52-6a53-4d35-8f5e-1b7e0d9e0a51"}
    signature = SigningKey.generate().sign(raw).to_dict()
    spec = JobSpec(cmd="true", idempotency_key=raw["idempotency_key"], signature=signature)
    job = Job("018f0000000000000001", spec, JobState.SUCCEEDED, 1790000000.1, node="node2")
    job.updated_at, job.exit_code, job.reason = 1790000000.4, 0, "exit code 0"
    attempt = Attempt(1, "node2", 1790000000.2, 1790000000.25, 1790000000.3, "SUCCEEDED", 0)
    attempt.reason, attempt.lease = "exit code 0", 7587869786977788
    job.attempts.append(attempt)
    return job


def per_op_us(fn: Callable[[], object], number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def stdlib_cases(job: Job, record: bytes, event: bytes) -> dict[str, Callable[[], object]]:
    json_body = json.loads(event)  # encoded from the same dict as wire.encode gets
    return {
        "record encode": job.to_json,
        "record decode": lambda: Job.from_json(record),
        "event encode": lambda: json.dumps(json_body, separators=(",", ":")).encode(),
        "event decode": lambda: wire.parse_event(event),
    }


def orjson_cases(job: Job, record: bytes, event: bytes) -> dict[str, Callable[[], object]]:
    import orjson

    json_body = json.loads(event)
    return {
        "record encode": lambda: orjson.dumps(job.to_dict()),
        "record decode": lambda: Job.from_dict(orjson.loads(record)),
        "event encode": lambda: orjson.dumps(json_body),
        "event decode": lambda: orjson.loads(event),
    }


def msgspec_cases(job: Job, record: bytes, event: bytes) -> dict[str, Callable[[], object]]:
    """The records as msgspec Structs: decoding makes the typed object, no dict between."""
    if msgspec is None:
        raise ImportError("msgspec")
    decode_job = msgspec.json.Decoder(JobS).decode
    decode_event = msgspec.json.Decoder(EventS).decode
    encode = msgspec.json.Encoder().encode
    typed, typed_event = decode_job(record), decode_event(event)
    return {
        "record encode": lambda: encode(typed),
        "record decode": lambda: decode_job(record),
        "event encode": lambda: encode(typed_event),
        "event decode": lambda: decode_event(event),
    }


def main() -> int:
    job = finished_job()
    record, event = job.to_json(), wire.event(job, 1790000000.5)
    print(f"record {len(record)} bytes, event {len(event)} bytes; microseconds per operation")
    table: dict[str, dict[str, float]] = {}
    for name, cases in (
        ("json (today)", stdlib_cases),
        ("orjson", orjson_cases),
        ("msgspec Struct", msgspec_cases),
    ):
        try:
            table[name] = {op: per_op_us(fn) for op, fn in cases(job, record, event).items()}
        except ImportError as exc:
            print(f"{name}: not importable ({exc}); skipped")
    for name, ops in table.items():
        per_job = ops["record encode"] * WRITES_PER_JOB + ops["record decode"] * READS_PER_JOB
        cells = "  ".join(f"{op} {us:6.1f}" for op, us in ops.items())
        print(f"{name:<15} {cells}  records per job {per_job:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
