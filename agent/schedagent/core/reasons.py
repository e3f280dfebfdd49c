"""How an attempt ended, as a metric label: a few fixed classes, not the reason's text (pure)."""

from __future__ import annotations

from schedagent.core.model import JobState

# Every class reason_class can return: the label's whole range (docs/metrics.md).
REASON_CLASSES = (
    "exit_code",
    "signal",
    "timeout",
    "canceled",
    "out_of_memory",
    "cannot_start",
    "worker_error",
    "agent_stopped",
    "lease_lost",
    "other",
)

# Attempt ends that are not a job state: the agent, not the job, ended the attempt.
HANDED_BACK = "HANDED_BACK"  # the agent stopped; the attempt goes back to the queue
INTERRUPTED = "INTERRUPTED"  # lease lost or fenced; retried elsewhere


def reason_class(state: str, reason: str | None) -> str:
    """The class of an attempt's end: state is a JobState or HANDED_BACK/INTERRUPTED."""
    text = reason or ""
    if state == HANDED_BACK:
        return "agent_stopped"
    if state == INTERRUPTED:
        return "lease_lost"
    if state == JobState.TIMED_OUT:
        return "timeout"
    if state == JobState.CANCELED:
        return "canceled"
    for prefix, cls in _PREFIXES:
        if text.startswith(prefix):
            return cls
    return "other"


_PREFIXES = (
    ("exit code", "exit_code"),
    ("killed by", "signal"),
    ("out of memory", "out_of_memory"),
    ("cannot start", "cannot_start"),
    ("the worker", "worker_error"),
)
