"""One term as leader: the scheduler, its API and the leader-only loops, run together."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence

from schedagent.config import AgentConfig
from schedagent.core.names import Keys
from schedagent.daemon.fleet import FleetLoop
from schedagent.daemon.leader_heartbeat import LeaderHeartbeat
from schedagent.daemon.leaderapi import LeaderApi
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.metrics_cluster import LeaderCollector
from schedagent.daemon.retention import Retention
from schedagent.daemon.scheduler import Scheduler
from schedagent.daemon.schedules import ScheduleLoop
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.store import Compare, CreateRevisionIs, Store
from schedagent.nats.bus import Bus
from schedagent.tasks import cancel_and_wait


class Leadership:
    """What the election runs while this agent leads (`await leadership.lead(fence)`).

    Every write of a term carries its fence, so once another agent leads they fail,
    and the first loop that fails ends the term (the election stands again).
    """

    def __init__(
        self,
        config: AgentConfig,
        parts: tuple[Store, Keys, JobStore, Bus, AgentMetrics],
        leader_beat: LeaderHeartbeat,
        figures: LeaderCollector,
    ) -> None:
        self.config = config
        self.store, self.keys, self.jobs, self.bus, self.metrics = parts
        self.leader_beat = leader_beat
        self.figures = figures

    async def lead(self, fence: Sequence[Compare]) -> None:
        self.metrics.leaderships.inc()
        token = fence[0].revision if isinstance(fence[0], CreateRevisionIs) else 0
        beat = asyncio.create_task(self.leader_beat.beat(token), name="leader-heartbeat")
        retention = Retention(lambda: self.config.jobs, self.jobs, fence)
        sweeper = asyncio.create_task(retention.run(), name="retention")
        schedules = ScheduleLoop(self.keys, self.jobs, self.bus, fence, self.metrics)
        slots = asyncio.create_task(schedules.run(), name="schedules")
        fleet = FleetLoop(self.keys, self.jobs, self.bus, fence)
        rollouts = asyncio.create_task(fleet.run(), name="fleet")
        scheduler = self._scheduler(fence)
        self.figures.view = scheduler.view
        leader_api = LeaderApi(self.bus, self.jobs, scheduler)
        try:
            await leader_api.start()
            await _lead_until_either_ends(scheduler.run(), [slots, rollouts])
        finally:
            self.figures.view = None
            await leader_api.stop()
            await cancel_and_wait(beat, sweeper, slots, rollouts)

    def _scheduler(self, fence: Sequence[Compare]) -> Scheduler:
        suspects = functools.partial(self.leader_beat.suspects, self.config.node_ttl + 1.0)
        return Scheduler(
            self.config, self.store, self.keys, self.jobs, self.bus, fence, suspects, self.metrics
        )


async def _lead_until_either_ends(
    scheduler: Awaitable[None], loops: Sequence[asyncio.Task[None]]
) -> None:
    """Run the scheduler until it or a leader loop (schedules, fleet runs) ends; a loop
    that failed (fenced, etcd away) ends the leadership too, with its error, so the
    election stands again."""
    placing = asyncio.ensure_future(scheduler)
    try:
        await asyncio.wait({placing, *loops}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when the leadership ends (we are cancelled): a scheduler left running
        # would go on from a deposed leader's view, and its watches would outlive the
        # agent's stop (they reopened the closed etcd client and held up the exit).
        stopped = not placing.done()
        if stopped:
            await cancel_and_wait(placing)
    if stopped:
        for loop in loops:
            if loop.done():
                loop.result()  # raises what ended the loop
        return
    placing.result()
