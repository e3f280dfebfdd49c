"""The node verbs of the API: node_cordon, _uncordon, _drain and _forget (signed, audited)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from schedagent.core.cordon import Cordon, check_deadline, check_node_name
from schedagent.daemon.gate import Gate, Refused, audit_node
from schedagent.errors import ConflictError, NotFoundError, SpecError
from schedagent.etcd.cordonstore import CordonStore
from schedagent.etcd.groupstore import GroupStore

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class NodeApi:
    def __init__(self, gate: Gate, cordons: CordonStore, groups: GroupStore) -> None:
        self.gate = gate
        self.cordons = cordons
        self.groups = groups

    def handlers(self) -> dict[str, Handler]:
        return {
            "node_cordon": lambda req: self.cordon(req, drain=False),
            "node_drain": lambda req: self.cordon(req, drain=True),
            "node_uncordon": self.uncordon,
            "node_forget": self.forget,
        }

    def _checked(self, action: str, req: dict[str, Any]) -> tuple[str, float | None, str | None]:
        """The node, the deadline and who signed: SpecError (audited) if refused."""
        try:
            node = check_node_name(req.get("node"))
            deadline = check_deadline(req.get("deadline")) if action == "drain" else None
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        raw = req.get("signature")
        try:
            signer = self.gate.check_node_action(action, node, deadline, raw, time.time())
        except Refused as exc:
            key = raw.get("key_id") if isinstance(raw, dict) else None
            audit_node(
                f"node-{action}", node, str(key)[:64] if key else None, str(exc), logging.WARNING
            )
            raise SpecError(str(exc)) from None
        return node, deadline, signer

    async def cordon(self, req: dict[str, Any], drain: bool) -> dict[str, Any]:
        action = "drain" if drain else "cordon"
        node, deadline, signer = self._checked(action, req)
        now = time.time()
        at = None if deadline is None else now + deadline
        cordon = Cordon(node, now, signer, drain, at)
        await self.cordons.put(cordon)
        after = "its jobs.drain_timeout" if deadline is None else f"{deadline:g}s"
        when = f", running jobs handed back after {after}" if drain else ""
        log.info("node %s %s by an operator%s", node, cordon.describe(), when)
        audit_node(f"node-{action}", node, signer, cordon.describe())
        return {"cordon": cordon_dict(cordon)}

    async def uncordon(self, req: dict[str, Any]) -> dict[str, Any]:
        node, _, signer = self._checked("uncordon", req)
        if not await self.cordons.delete(node):
            audit_node("node-uncordon", node, signer, "was not cordoned")
            raise NotFoundError(f"node {node} is not cordoned")
        log.info("node %s uncordoned by an operator", node)
        audit_node("node-uncordon", node, signer, "uncordoned")
        return {"node": node}

    async def forget(self, req: dict[str, Any]) -> dict[str, Any]:
        node, _, signer = self._checked("forget", req)
        known = await self.groups.forget(node)
        if known is None:
            audit_node("node-forget", node, signer, "refused: it is up")
            raise ConflictError(f"node {node} is up: stop its agent (for good) first")
        if not known:
            audit_node("node-forget", node, signer, "was not known")
            raise NotFoundError(f"node {node} is not known")
        log.info("node %s forgotten by an operator: fleet runs no longer name it", node)
        audit_node("node-forget", node, signer, "forgotten")
        return {"node": node}


def cordon_dict(cordon: Cordon) -> dict[str, Any]:
    return {k: v for k, v in msgspec.to_builtins(cordon).items() if k != "v"}
