"""CPUs held on each node by its ASSIGNED and RUNNING jobs, kept as jobs change (pure)."""

from __future__ import annotations


class NodeUsage:
    """Which jobs hold CPUs on which node, and how many CPUs that makes per node."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, float]] = {}  # job key -> (node, cpus)
        self._jobs: dict[str, set[str]] = {}  # node -> job keys
        self._used: dict[str, float] = {}

    def hold(self, key: str, node: str, cpus: float) -> None:
        self.release(key)
        self.held[key] = (node, cpus)
        self._jobs.setdefault(node, set()).add(key)
        self._used[node] = self._used.get(node, 0.0) + cpus

    def release(self, key: str) -> str | None:
        """Stop counting the job; the node it was on, or None if it held nothing."""
        held = self.held.pop(key, None)
        if held is None:
            return None
        node, cpus = held
        jobs = self._jobs[node]
        jobs.discard(key)
        if jobs:
            self._used[node] -= cpus
        else:
            # Exactly zero, so rounding in the running sum never outlives the jobs.
            del self._jobs[node], self._used[node]
        return node

    def used(self, node: str) -> float:
        return self._used.get(node, 0.0)

    def jobs_on(self, node: str) -> frozenset[str]:
        return frozenset(self._jobs.get(node, ()))
