"""Records read back from etcd: a good one decodes, a malformed one is skipped and logged."""

from __future__ import annotations

import pytest

from schedagent.core.model import NodeRecord
from schedagent.etcd.jobstore import decode_job, decode_node
from schedagent.etcd.store import KV

NODE = NodeRecord(
    name="n1",
    hostname="h1",
    cpus=2.0,
    memory_total=1 << 30,
    memory_available=1 << 29,
    load=(0.1, 0.2, 0.3),
    labels={"zone": "a"},
    version="0.1.0",
    started_at=1.0,
    lease=7,
    addresses=("127.0.0.1",),
)


def kv(key: str, value: bytes) -> KV:
    return KV(key, value, 1, 1, 0)


def test_a_node_record_round_trips() -> None:
    assert decode_node(kv("/p/nodes/n1", NODE.to_json())) == NODE


@pytest.mark.parametrize("raw", [b"not json", b'{"name": "n1"}', b'{"name": "n1", "load": 5}'])
def test_a_malformed_record_is_skipped_and_logged(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    assert decode_node(kv("/p/nodes/bad", raw)) is None
    assert decode_job(kv("/p/jobs/bad", raw)) is None
    assert "ignoring malformed node record at /p/nodes/bad" in caplog.text
    assert "ignoring malformed job record at /p/jobs/bad" in caplog.text
