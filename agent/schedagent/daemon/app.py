"""The agent process: connects, registers, serves, reloads on SIGHUP, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from schedagent.config import AgentConfig
from schedagent.core.names import Keys
from schedagent.daemon.api import Api
from schedagent.daemon.drainwatch import DrainWatch
from schedagent.daemon.etcd_reach import EtcdReach
from schedagent.daemon.fence import Fence
from schedagent.daemon.leader_heartbeat import LeaderHeartbeat
from schedagent.daemon.leadership import Leadership
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.metrics_cluster import LeaderCollector
from schedagent.daemon.metrics_http import MetricsServer
from schedagent.daemon.reconciler import Reconciler
from schedagent.daemon.registry import Registry
from schedagent.daemon.reload import Reloader
from schedagent.daemon.restart import Succession
from schedagent.daemon.worker import Worker
from schedagent.errors import ListenError, StoreUnavailableError
from schedagent.etcd.election import Election
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.session import Session
from schedagent.etcd.store import Store
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
        succession = Succession()
        # Also with containment.systemd off: jobs handed over must be waited for.
        succession.read()
        etcd_where = f"etcd at {','.join(config.etcd.endpoints)}"
        start = functools.partial(succession.start_session, session)
        if not await until_ready(etcd_where, start, signals.stop, heartbeat.status):
            heartbeat.stopping(f"stopped before reaching {etcd_where}")
            return 0
        stack.push_async_callback(_revoke_unless_handed_over, session, succession)
        parts = (store, keys, bus, session, metrics)
        return await _serve(config, parts, signals, heartbeat, (config_path, succession))
    return 0  # pragma: no cover - the stack's exit is above


async def _revoke_unless_handed_over(session: Session, succession: Succession) -> None:
    """Give the lease back at exit, unless the next agent takes it over (a restart)."""
    if not succession.handed_over:
        await session.revoke()


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
    origin: tuple[str | None, Succession],
) -> int:
    """Serve until stopped; origin: the config's path (for reloads), and what this
    agent takes from the last one and leaves the next."""
    store, keys, bus, session, metrics = parts
    config_path, succession = origin
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
    await succession.take_over(worker, worker.containment)
    await worker.reap_leftovers()
    if not await until_ready(
        "node registration", registry.register, signals.stop, heartbeat.status
    ):
        heartbeat.stopping("stopped before the node was registered")
        return 0
    api = Api(config, store, keys, jobs, bus, election)
    await api.start()

    leader_beat = LeaderHeartbeat(bus, store, election)
    leadership = Leadership(config, (store, keys, jobs, bus, metrics), leader_beat, leader_figures)

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
    background = {
        "lease": session.keep_alive(),
        "lease-follower": worker.follow_lease(session),
        "reconciler": Reconciler(worker, session).run(),
        "registry": registry.run(),
        "election": election.run(leadership.lead),
        "leader-watch": leader_beat.watch(),
        "fence": fence.run(),
        "drain-watch": drains.run(),
        "etcd-reach": reach.run(),
        "status": heartbeat.keep_status(describe),
        "watchdog": heartbeat.watchdog(),
        "reloads": _reloads(signals.reload, reloader, heartbeat, describe),
    }

    async def hand_over() -> None:
        await succession.hand_over(worker, session, store, keys, worker.containment)

    restart = (functools.partial(succession.restarting, worker.containment), hand_over)
    try:
        await _run_until_stopped(background, (worker, registry), signals, heartbeat, restart)
    finally:
        await api.stop()
        await worker.containment.close()
    log.info("stopped: %d finished, %d handed back", worker.finished, worker.handed_back)
    return 0


async def _run_until_stopped(
    background: dict[str, Coroutine[Any, Any, None]],
    parts: tuple[Worker, Registry],
    signals: Signals,
    heartbeat: Heartbeat,
    restart: tuple[Callable[[], Awaitable[bool]], Callable[[], Awaitable[None]]],
) -> None:
    """Run the worker and the background loops until a stop signal, then drain the
    worker (or, if systemd is restarting this agent, hand its jobs over) and cancel
    the loops; a loop that fails ends the agent (the TaskGroup)."""
    worker, registry = parts
    restarting, hand_over = restart
    async with asyncio.TaskGroup() as tg:
        tasks = {name: tg.create_task(work, name=name) for name, work in background.items()}
        worker_task = tg.create_task(worker.run(), name="worker")
        await signals.stop.wait()
        if await restarting():
            heartbeat.stopping(f"restarting: handing {len(worker.running)} running job(s) over")
            worker.accepting = False
            await worker_task
            # Leadership ends first: the election would stand again once resigned. The
            # reconciler too: it would take the attempts left running (no longer the
            # worker's) for attempts whose end was lost.
            for name in ("election", "reconciler"):
                await cancel_and_wait(tasks[name])
            await hand_over()
        else:
            heartbeat.stopping(f"stopping: draining {len(worker.running)} running job(s)")
            await _drain(registry, worker, worker_task, signals)
        for task in tasks.values():
            task.cancel()


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
