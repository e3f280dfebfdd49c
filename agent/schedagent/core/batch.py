"""How a batch of job creates is cut into etcd transactions, and which specs repeat a key."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# etcd refuses a transaction with more than --max-txn-ops (default 128) compares or
# operations, or a request over --max-request-bytes (default 1.5 MiB).
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class CreatePlan:
    """chunks: indexes created together, one transaction each, in order.

    same_as: a spec whose idempotency key an earlier spec of the batch carries gets
    that spec's job (index -> the earlier index); it is in no chunk.
    """

    chunks: list[list[int]]
    same_as: dict[int, int]


def plan_creates(
    items: Sequence[tuple[str | None, int]],
    max_ops: int = MAX_TXN_OPS,
    max_bytes: int = MAX_TXN_BYTES,
    ops_per_job: int = 1,
) -> CreatePlan:
    """items: (idempotency key or None, bytes written) per spec, in batch order.

    A job costs ops_per_job compares (or puts, whichever are more) without a key, one
    more with one.
    """
    chunks: list[list[int]] = []
    same_as: dict[int, int] = {}
    owner: dict[str, int] = {}
    chunk: list[int] = []
    ops = size = 0
    for index, (key, nbytes) in enumerate(items):
        if key is not None and key in owner:
            same_as[index] = owner[key]
            continue
        if key is not None:
            owner[key] = index
        cost = ops_per_job if key is None else ops_per_job + 1
        if chunk and (ops + cost > max_ops or size + nbytes > max_bytes):
            chunks.append(chunk)
            chunk, ops, size = [], 0, 0
        chunk.append(index)
        ops += cost
        size += nbytes
    if chunk:
        chunks.append(chunk)
    return CreatePlan(chunks, same_as)
