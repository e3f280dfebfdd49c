"""Cordons in etcd: `{p}/cordons/{node}`, written by the API, read by the leader and the node."""

from __future__ import annotations

from schedagent.core.cordon import Cordon
from schedagent.core.names import Keys
from schedagent.etcd import malformed
from schedagent.etcd.store import KV, Delete, Put, Store


def decode_cordon(key: str, raw: bytes) -> Cordon | None:
    """The cordon at key, or None (logged once) if it is not one, or names another node."""
    cordon = malformed.decode("cordon", key, raw, Cordon.from_json)
    if cordon is not None and not key.endswith(f"/{cordon.node}"):
        malformed.note("cordon", key, raw, f"names node {cordon.node!r}, not its key's")
        return None
    return cordon


class CordonStore:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys

    async def put(self, cordon: Cordon) -> None:
        """Cordon (or drain) the node; a cordon there already is replaced."""
        await self.store.txn([], [Put(self.keys.cordon(cordon.node), cordon.to_json())])

    async def delete(self, node: str) -> bool:
        """Uncordon: whether there was a cordon."""
        key = self.keys.cordon(node)
        had = await self.store.get(key) is not None
        await self.store.txn([], [Delete(key)])
        return had

    async def all(self) -> dict[str, Cordon]:
        kvs, _ = await self.store.get_prefix(self.keys.cordons)
        return {c.node: c for c in map(_decode_kv, kvs) if c is not None}


def _decode_kv(kv: KV) -> Cordon | None:
    return decode_cordon(kv.key, kv.value)
