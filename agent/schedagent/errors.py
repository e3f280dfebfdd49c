"""The project's exception tree: one root, one small class per kind of failure."""


class SchedagentError(Exception):
    """Root of every error schedagent raises on purpose."""


class ConfigError(SchedagentError):
    """A configuration file is missing, unreadable or invalid."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class SpecError(SchedagentError):
    """A job spec or API request is malformed or violates a limit."""


class FleetError(SpecError):
    """A fleet run's definition, record or request is not valid."""


class ScheduleError(SpecError):
    """A schedule (its cron expression, zone, policies or job) is malformed."""


class NotFoundError(SchedagentError):
    """A job or node does not exist."""


class ConflictError(SchedagentError):
    """A compare-and-swap lost against a concurrent writer too many times."""


class FencedError(SchedagentError):
    """A write was refused because the writer no longer holds its fence."""


class StoreUnavailableError(SchedagentError):
    """etcd could not be reached."""


class WireError(SpecError):
    """A NATS message body is malformed (not JSON, not an object, a bad field)."""


class ContainmentError(SchedagentError):
    """A job's limits cannot be enforced on this host, or its cgroup cannot be made."""


class ListenError(SchedagentError):
    """An address the agent should serve on cannot be bound (in use, not this host's)."""


class HandedOver(SchedagentError):
    """An attempt was left running for the next agent (a planned restart): this one
    records no end of it."""
