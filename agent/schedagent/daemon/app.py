"""The agent process: connects, registers, serves, reloads on SIGHUP, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

from schedagent.config import AgentConfig
from schedagent.core.names import Keys
from schedagent.daemon.api import Api
from schedagent.daemon.drainwatch import DrainWatch
from schedagent.daemon.etcd_reach import EtcdReach
from schedagent.daemon.fence import Fence
from schedagent.daemon.fleet import FleetLoop
from schedagent.daemon.leader_heartbeat import LeaderHeartbeat
from schedagent.daemon.leaderapi import LeaderApi
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.metrics_cluster import LeaderCollector
from schedagent.daemon.metrics_http import MetricsServer
from schedagent.daemon.reconciler import Reconciler
from schedagent.daemon.registry import Registry
from schedagent.daemon.reload import Reloader
from schedagent.daemon.retention import Retention
from schedagent.daemon.scheduler import Scheduler
from schedagent.daemon.schedules import ScheduleLoop
from schedagent.daemon.worker import Worker
from schedagent.errors import ListenError, StoreUnavailableError
from schedagent.etcd.election import Election
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.session import Session
from schedagent.etcd.store import Compare, CreateRevisionIs, Store
from schedagent.etcd.tls import EtcdTls
from schedagent.host.notify import Notifier
from schedagent.host.service import Heartbeat, Snapshot, status_line, watchdog_problem
from schedagent.nats.bus import Bus
from schedagent.nats.connect import without_secrets
from schedagent.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CONNECT_RETRY_MAX = 5.0
EXIT_CONFIG = 2  # as cli's: the configuration (here, with the unit's) cannot work


class Signals:
    """SIGTERM/SIGINT: the first asks for a drain, the second for a stop now; SIGHUP: reload."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.reload = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)

    def _on_signal(self) -> None:
        (self.hurry if self.stop.is_set() else self.stop).set()


async def until_ready(
    what: str,
    attempt: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    report: Callable[[str], None] = lambda _status: None,
) -> bool:
    """Retry `attempt` with capped backoff until it works (True) or stop is set (False).

    `report` hears each new problem as a status line (systemd's STATUS= while starting).
    """
    delay, last = 0.2, ""
    report(f"connecting to {what}")
    while not stop.is_set():
        try:
            return await _unless_stopped(attempt(), stop)
        except (StoreUnavailableError, OSError, TimeoutError) as exc:
            problem = (str(exc) or type(exc).__name__).removeprefix(f"{what}: ")
        except Exception as exc:  # nats-py raises its own tree for connection failures
            problem = f"{type(exc).__name__}: {exc}"
        if problem != last:
            log.warning("waiting for %s: %s", what, problem)
            report(f"waiting for {what}: {problem}")
            last = problem
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, CONNECT_RETRY_MAX)
    return False


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await work unless stop comes first (then cancel it): whether work finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        await cancel_and_wait(task)
        return False
    task.result()  # raises what the work raised
    return True


async def run_agent(
    config: AgentConfig, config_path: str | None = None, etcd_tls: EtcdTls | None = None
) -> int:
    heartbeat = Heartbeat(Notifier.from_environ())
    if not _watchdog_fits(heartbeat.notifier, config.node_ttl):
        heartbeat.notifier.close()
        return EXIT_CONFIG
    signals = Signals()
    signals.install()
    try:
        return await _run(config, config_path, etcd_tls, signals, heartbeat)
    finally:
        heartbeat.notifier.close()


def _watchdog_fits(notifier: Notifier, ttl: int) -> bool:
    """False (said in one line) if systemd's watchdog cannot kill a frozen agent in time."""
    interval = notifier.watchdog_interval
    problem = watchdog_problem(None if interval is None else 2 * interval, ttl)
    if problem is not None:
        log.error("%s", problem)
        return False
    if notifier.enabled and interval is None:
        log.warning(
            "no systemd watchdog (WatchdogSec=): if this agent freezes, its jobs run on "
            "while they are retried elsewhere"
        )
    return True


async def _run(
    config: AgentConfig,
    config_path: str | None,
    etcd_tls: EtcdTls | None,
    signals: Signals,
    heartbeat: Heartbeat,
) -> int:
    keys = Keys(config.etcd.prefix)
    metrics = AgentMetrics()
    async with contextlib.AsyncExitStack() as stack:
        if not await _serve_metrics(config, metrics, stack):
            return EXIT_CONFIG
        store = Store(config.etcd.endpoints, config.etcd.timeout, etcd_tls)
        store.on_call = metrics.etcd_call
        stack.push_async_callback(store.close)
        await store.connect()
        bus = Bus(config.nats, config.output, config.node_name)
        bus.on_round_trip = metrics.nats_round_trip
        bus.on_publish_error = metrics.nats_publish_failed
        nats_where = f"NATS at {without_secrets(config.nats.urls)}"
        if not await until_ready(nats_where, bus.connect, signals.stop, heartbeat.status):
            heartbeat.stopping(f"stopped before reaching {nats_where}")
            return 0
        stack.push_async_callback(bus.close)
        session = Session(store, config.node_ttl)
        etcd_where = f"etcd at {','.join(config.etcd.endpoints)}"
        if not await until_ready(etcd_where, session.start, signals.stop, heartbeat.status):
            heartbeat.stopping(f"stopped before reaching {etcd_where}")
            return 0
        stack.push_async_callback(session.revoke)
        parts = (store, keys, bus, session, metrics)
        return await _serve(config, parts, signals, heartbeat, config_path)
    return 0  # pragma: no cover - the stack's exit is above


async def _serve_metrics(
    config: AgentConfig, metrics: AgentMetrics, stack: contextlib.AsyncExitStack
) -> bool:
    """Serve /metrics from the start (etcd and NATS troubles show there too); False if
    metrics.listen cannot be bound, which the operator must fix."""
    if config.metrics.listen is None:
        return True
    server = MetricsServer(metrics.registry, *config.metrics.listen, config.metrics.allow)
    try:
        await server.start()
    except ListenError as exc:
        log.error("%s", exc)
        return False
    stack.push_async_callback(server.stop)
    return True


async def _serve(
    config: AgentConfig,
    parts: tuple[Store, Keys, Bus, Session, AgentMetrics],
    signals: Signals,
    heartbeat: Heartbeat,
    config_path: str | None,
) -> int:
    store, keys, bus, session, metrics = parts
    jobs = JobStore(store, keys)
    worker = Worker(config, jobs, bus, lambda: session.lease_id, metrics)
    election = Election(store, keys, session, config.node_name)
    metrics.watch_agent(worker.usage, session.age, config.node_ttl, lambda: election.is_leader)
    leader_figures = LeaderCollector()
    metrics.registry.register(leader_figures)
    reach = EtcdReach(
        bus,
        session,
        config.node_name,
        lambda: {e.value for e in election.candidates.items.values()},
    )
    fence = Fence(session, worker, reach.stop_by)
    worker.may_start = fence.may_start
    registry = Registry(store, keys, session, config, worker.usage)
    if config.containment.systemd:
        await worker.containment.use_systemd()
    await worker.reap_leftovers()
    if not await until_ready(
        "node registration", registry.register, signals.stop, heartbeat.status
    ):
        heartbeat.stopping("stopped before the node was registered")
        return 0
    api = Api(config, store, keys, jobs, bus, election)
    await api.start()

    leader_beat = LeaderHeartbeat(bus, store, election)

    async def lead(fence: Sequence[Compare]) -> None:
        metrics.leaderships.inc()
        token = fence[0].revision if isinstance(fence[0], CreateRevisionIs) else 0
        beat = asyncio.create_task(leader_beat.beat(token), name="leader-heartbeat")
        retention = Retention(lambda: config.jobs, jobs, fence)
        sweeper = asyncio.create_task(retention.run(), name="retention")
        # Its fenced writes fail once another agent leads; the scheduler notices too.
        loop = ScheduleLoop(keys, jobs, bus, fence, metrics)
        slots = asyncio.create_task(loop.run(), name="schedules")
        rollouts = asyncio.create_task(FleetLoop(keys, jobs, bus, fence).run(), name="fleet")
        suspects = functools.partial(leader_beat.suspects, config.node_ttl + 1.0)
        scheduler = Scheduler(config, store, keys, jobs, bus, fence, suspects, metrics)
        leader_figures.view = scheduler.view
        leader_api = LeaderApi(bus, jobs, scheduler)
        try:
            await leader_api.start()
            await _lead_until_either_ends(scheduler.run(), [slots, rollouts])
        finally:
            leader_figures.view = None
            await leader_api.stop()
            await cancel_and_wait(beat, sweeper, slots, rollouts)

    async def republish() -> None:
        # New labels and CPUs show at once; if etcd is away, registry.run retries anyway.
        with contextlib.suppress(StoreUnavailableError):
            await registry.register()

    # Reloaded config goes to those who read it per use; the rest needs a restart.
    reloader = Reloader(config_path, config, [worker, registry, api], republish)

    # The worker's config: drain_timeout may have been changed by a reload.
    drains = DrainWatch(store, keys, worker, lambda: worker.config.jobs.drain_timeout)
    describe = _describer(election, worker, registry, (session, bus, reloader, fence))
    log.info(
        "agent %s ready: %g CPUs, lease %x",
        config.node_name,
        registry.record().cpus,
        session.lease_id,
    )
    heartbeat.ready(describe())
    try:
        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(session.keep_alive(), name="lease"),
                tg.create_task(worker.follow_lease(session), name="lease-follower"),
                tg.create_task(Reconciler(worker, session).run(), name="reconciler"),
                tg.create_task(registry.run(), name="registry"),
                tg.create_task(election.run(lead), name="election"),
                tg.create_task(leader_beat.watch(), name="leader-watch"),
                tg.create_task(fence.run(), name="fence"),
                tg.create_task(drains.run(), name="drain-watch"),
                tg.create_task(reach.run(), name="etcd-reach"),
                tg.create_task(heartbeat.keep_status(describe), name="status"),
                tg.create_task(heartbeat.watchdog(), name="watchdog"),
                tg.create_task(_reloads(signals.reload, reloader, heartbeat, describe)),
            ]
            worker_task = tg.create_task(worker.run(), name="worker")
            await signals.stop.wait()
            heartbeat.stopping(f"stopping: draining {len(worker.running)} running job(s)")
            await _drain(registry, worker, worker_task, signals)
            for task in background:
                task.cancel()
    finally:
        await api.stop()
        await worker.containment.close()
    log.info("stopped: %d finished, %d handed back", worker.finished, worker.handed_back)
    return 0


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


def _describer(
    election: Election,
    worker: Worker,
    registry: Registry,
    parts: tuple[Session, Bus, Reloader, Fence],
) -> Callable[[], str]:
    """The STATUS= line, asked of the parts that know each fact."""
    session, bus, reloader, fence = parts

    def describe() -> str:
        leader = election.leader()
        return status_line(
            Snapshot(
                election.is_leader,
                leader.node if leader else None,
                len(worker.running),
                registry.draining,
                (session.last_problem, bus.last_problem, reloader.problem, fence.problem),
            )
        )

    return describe


async def _reloads(
    requested: asyncio.Event, reloader: Reloader, heartbeat: Heartbeat, describe: Callable[[], str]
) -> None:
    """One reload per SIGHUP, framed by RELOADING=1 and READY=1 as systemd expects."""
    while True:
        await requested.wait()
        requested.clear()
        heartbeat.notifier.reloading()
        await reloader.reload()
        heartbeat.ready(describe())


async def _drain(
    registry: Registry,
    worker: Worker,
    worker_task: asyncio.Task[None],
    signals: Signals,
) -> None:
    log.info("stopping: no new jobs; draining")
    worker.accepting = False
    await registry.set_draining()
    await worker_task
    # The worker's config: drain_timeout may have been changed by a reload.
    timeout = 0.0 if signals.hurry.is_set() else worker.config.jobs.drain_timeout
    hurry = asyncio.create_task(signals.hurry.wait())
    drain = asyncio.create_task(worker.drain(timeout))
    await asyncio.wait({hurry, drain}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        log.info("second signal: stopping now")
        await cancel_and_wait(drain)
        await worker.drain(0)
    await cancel_and_wait(hurry)
