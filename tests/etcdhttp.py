"""etcd's JSON gateway from a test: keys written, read and deleted as raw bytes.

A test writes records the agents could never write (not JSON, not UTF-8, from a newer
version, forged) the way tests/integration/test_devcluster.py's fake agent does.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"{endpoint}{path}", data=json.dumps(body).encode())
    with _HTTP.open(request, timeout=5) as resp:
        return dict(json.load(resp))


def put(endpoint: str, key: str, value: bytes) -> None:
    _post(endpoint, "/v3/kv/put", {"key": _b64(key.encode()), "value": _b64(value)})


def delete(endpoint: str, key: str) -> None:
    _post(endpoint, "/v3/kv/deleterange", {"key": _b64(key.encode())})


def get(endpoint: str, key: str) -> bytes | None:
    kvs = _post(endpoint, "/v3/kv/range", {"key": _b64(key.encode())}).get("kvs", [])
    return base64.b64decode(kvs[0].get("value", "")) if kvs else None


def under(endpoint: str, prefix: str) -> dict[str, bytes]:
    """Every key under prefix and its value."""
    end = prefix[:-1].encode() + bytes([ord(prefix[-1]) + 1])
    body = {"key": _b64(prefix.encode()), "range_end": _b64(end)}
    kvs = _post(endpoint, "/v3/kv/range", body).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")) for kv in kvs
    }


def revisions(endpoint: str, prefix: str) -> list[tuple[bytes, int]]:
    """(value, create revision) of every key under prefix."""
    end = prefix[:-1].encode() + bytes([ord(prefix[-1]) + 1])
    body = {"key": _b64(prefix.encode()), "range_end": _b64(end)}
    kvs = _post(endpoint, "/v3/kv/range", body).get("kvs", [])
    return [(base64.b64decode(kv.get("value", "")), int(kv["create_revision"])) for kv in kvs]
