"""What a job record and a NATS body cost to encode and decode: the model's msgspec
Structs, a record of a newer version (the tolerant path) and orjson over the record's
dict (if importable: not a dependency).

`python bench/encoding_bench.py`: microseconds per operation on a finished job's record
(signed spec, one attempt, as the worker writes it) and on an event body (stdlib json,
as core/wire does); then what a job's record traffic costs each way (4 writes encoded,
5 reads decoded: the leader's watch sees every write, the worker reads the record once).
The figures before the msgspec records are in docs/performance.md (Encodings).
"""

from __future__ import annotations

import json
import sys
import timeit
from collections.abc import Callable

from schedagent.core import wire
from schedagent.core.model import Attempt, Job, JobSpec, JobState
from schedagent.core.signing import SigningKey

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


def model_cases(job: Job, record: bytes, event: bytes) -> dict[str, Callable[[], object]]:
    """The records as core/model.py holds them (msgspec Structs); events as core/wire."""
    json_body = json.loads(event)  # encoded from the same dict as wire.encode gets
    return {
        "record encode": job.to_json,
        "record decode": lambda: Job.from_json(record),
        "event encode": lambda: json.dumps(json_body, separators=(",", ":")).encode(),
        "event decode": lambda: wire.parse_event(event),
    }


def newer_cases(job: Job, record: bytes, event: bytes) -> dict[str, Callable[[], object]]:
    """A record with a field of a newer version at each level: the tolerant path."""
    data = json.loads(record)
    data["priority"], data["spec"]["deadline"], data["attempts"][0]["zone"] = 3, 5, "b"
    newer = json.dumps(data).encode()
    kept = Job.from_json(newer)
    return {"record encode": kept.to_json, "record decode": lambda: Job.from_json(newer)}


def orjson_cases(job: Job, record: bytes, event: bytes) -> dict[str, Callable[[], object]]:
    import orjson

    json_body = json.loads(event)
    return {
        "record encode": lambda: orjson.dumps(job.to_dict()),
        "record decode": lambda: Job.from_dict(orjson.loads(record)),
        "event encode": lambda: orjson.dumps(json_body),
        "event decode": lambda: orjson.loads(event),
    }


def main() -> int:
    job = finished_job()
    record, event = job.to_json(), wire.event(job, 1790000000.5)
    print(f"record {len(record)} bytes, event {len(event)} bytes; microseconds per operation")
    table: dict[str, dict[str, float]] = {}
    for name, cases in (
        ("model (msgspec)", model_cases),
        ("newer fields", newer_cases),
        ("orjson + dict", orjson_cases),
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
