"""Where things live: etcd keys and NATS subjects, derived from the configured prefixes."""

from __future__ import annotations

import hashlib


class Keys:
    """The etcd keyspace under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes = f"{prefix}/nodes/"
        self.election = f"{prefix}/election/"
        self.jobs = f"{prefix}/jobs/"  # live records: not final yet
        self.done = f"{prefix}/done/"  # final records, until retention deletes them
        self.placed = f"{prefix}/placed/"  # {node}/{job}: attempts holding CPUs there
        self.idem_dir = f"{prefix}/idem/"
        self.nonces = f"{prefix}/nonces/"
        self.schedules = f"{prefix}/schedules/"  # {name}: signed definition, paused or not
        self.schedstate = f"{prefix}/schedstate/"  # {name}: the leader's last slot, outcomes
        self.groups = f"{prefix}/groups/"  # {id}: a fleet run: signed definition, targets
        self.hosts = f"{prefix}/hosts/"  # {name}: every node ever registered (no lease)

    def node(self, name: str) -> str:
        return self.nodes + name

    def job(self, job_id: str) -> str:
        return self.jobs + job_id

    def done_job(self, job_id: str) -> str:
        return self.done + job_id

    def placed_on(self, node: str) -> str:
        return f"{self.placed}{node}/"

    def placement(self, node: str, job_id: str) -> str:
        return self.placed_on(node) + job_id

    def candidate(self, lease: int) -> str:
        return f"{self.election}{lease:016x}"

    def idem(self, idempotency_key: str) -> str:
        # Hashed so any client string becomes a safe, fixed-length key.
        return self.idem_dir + hashlib.sha256(idempotency_key.encode()).hexdigest()

    def nonce(self, nonce: str) -> str:
        return self.nonces + nonce

    def schedule(self, name: str) -> str:
        return self.schedules + name

    def schedule_state(self, name: str) -> str:
        return self.schedstate + name

    def group(self, group_id: str) -> str:
        return self.groups + group_id

    def host(self, name: str) -> str:
        return self.hosts + name


class Subjects:
    """The NATS subjects and JetStream stream names under one prefix."""

    API_QUEUE = "schedagent"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        stem = prefix.replace(".", "_").upper()
        self.dispatch_stream = f"{stem}_DISPATCH"
        self.events_stream = f"{stem}_EVENTS"
        self.output_stream = f"{stem}_OUTPUT"

    def api(self, verb: str) -> str:
        return f"{self.prefix}.api.{verb}"

    def dispatch(self, node: str) -> str:
        return f"{self.prefix}.dispatch.{node}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}.events.{job_id}"

    def output(self, job_id: str) -> str:
        return f"{self.prefix}.output.{job_id}"

    def leader(self) -> str:
        return f"{self.prefix}.leader"

    def reach(self) -> str:
        return f"{self.prefix}.reach"

    def control(self, node: str) -> str:
        return f"{self.prefix}.control.{node}"

    def all(self, kind: str) -> str:
        return f"{self.prefix}.{kind}.>"
