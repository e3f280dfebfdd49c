"""Jobs held until every parent SUCCEEDED: an index parent -> waiting children (pure).

The leader's view keeps one of these. A parent's end costs O(its waiting children);
nothing here looks at the whole queue. What it cannot see (a parent already final,
so under done/ and outside the view) it asks the caller to read: `take_lookups`.
"""

from __future__ import annotations

from collections.abc import Callable

from schedagent.core.model import Job, JobState

IsLive = Callable[[str], bool]  # whether the job with this id is in the view, not final


def waits_for_parents(job: Job) -> bool:
    """Whether the job's parents still decide if it may run.

    Only before its first attempt: it was placed only once they all SUCCEEDED, and a
    final state never changes, so a retry or a hand-back does not wait again.
    """
    return bool(job.spec.after) and job.state == JobState.PENDING and not job.attempts


def parent_reason(parent: str, state: JobState | None) -> str:
    """Why a child ends unrun: its parent `parent` ended in `state` (None: not found)."""
    if state is None:
        return f"parent {parent} not found (deleted by retention?): not run"
    return f"parent {parent} ended {state}: not run"


class Dependencies:
    """Children (by etcd key) waiting for parents (by job id), indexed both ways.

    No parent's end is remembered once its children heard of it: a child seen later
    has its parent read from etcd again, so what a leader decides depends on etcd
    alone, and a new leader's rebuilt view decides the same.
    """

    def __init__(self) -> None:
        self.waiting: dict[str, set[str]] = {}  # child key -> parents not known SUCCEEDED
        self.children: dict[str, set[str]] = {}  # parent id -> child keys waiting for it
        self.doomed: dict[str, str] = {}  # child key -> why it ends without running
        self.lookups: set[str] = set()  # parents to read from etcd: not live, end unknown

    def held(self, key: str) -> bool:
        """Whether the child at key may not be placed (it waits, or must end unrun)."""
        return key in self.waiting or key in self.doomed

    def hold(self, key: str, job: Job, is_live: IsLive) -> None:
        """Take in a child that waits_for_parents: it is held (not placeable) until
        ended() has heard SUCCEEDED from each parent."""
        if self.held(key):
            return  # already taken in: its list of parents does not change
        if job.id in job.spec.after:
            self.doomed[key] = "names itself as its parent: not run"
            return
        self.waiting[key] = set(job.spec.after)
        for parent in job.spec.after:
            self.children.setdefault(parent, set()).add(key)
            if not is_live(parent):
                self.lookups.add(parent)

    def release(self, key: str) -> None:
        """The job at key is no longer a waiting child (it left the view, or moved on)."""
        if not self.held(key):
            return  # most jobs: no dict is changed
        self.doomed.pop(key, None)
        for parent in self.waiting.pop(key, ()):
            waiting = self.children.get(parent)
            if waiting is not None:
                waiting.discard(key)
                if not waiting:
                    del self.children[parent]
                    self.lookups.discard(parent)

    def left(self, job_id: str) -> None:
        """The job left the view without the view seeing how it ended (its record moved
        to done/ or was deleted): if children wait for it, its end must be read."""
        if job_id in self.children:
            self.lookups.add(job_id)

    def take_lookups(self, is_live: IsLive) -> list[str]:
        """Parents whose end the caller should read and report through ended(); one
        back in the view meanwhile is left to tell its own end."""
        found = sorted(p for p in self.lookups if not is_live(p))
        self.lookups.clear()
        return found

    def ended(self, parent: str, state: JobState | None) -> list[str]:
        """The parent is final in `state` (None: its record is gone): the child keys
        that now wait for nothing. Children it fails are in `doomed` afterwards."""
        self.lookups.discard(parent)
        ready = []
        for key in sorted(self.children.pop(parent, ())):
            unmet = self.waiting[key]
            if state != JobState.SUCCEEDED:
                self.release(key)
                self.doomed[key] = parent_reason(parent, state)
                continue
            unmet.discard(parent)
            if not unmet:
                del self.waiting[key]
                ready.append(key)
        return ready
