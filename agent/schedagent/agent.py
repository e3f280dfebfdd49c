"""The agent process: opens etcd and NATS, registers, serves, and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

from .api import Api
from .bus import Bus
from .config import AgentConfig
from .election import Election
from .errors import StoreUnavailableError
from .jobstore import JobStore
from .names import Keys
from .registry import Registry
from .scheduler import Scheduler
from .session import Session
from .store import Compare, Store
from .worker import Worker

log = logging.getLogger(__name__)

CONNECT_RETRY_MAX = 5.0


class Signals:
    """SIGTERM/SIGINT: the first asks for a drain, the second for a stop now."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        (self.hurry if self.stop.is_set() else self.stop).set()


async def until_ready(
    what: str, attempt: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> bool:
    """Retry `attempt` with capped backoff until it works (True) or stop is set (False)."""
    delay, last = 0.2, ""
    while not stop.is_set():
        try:
            await attempt()
            return True
        except (StoreUnavailableError, OSError, TimeoutError) as exc:
            problem = str(exc) or type(exc).__name__
            if problem != last:
                log.warning("waiting for %s: %s", what, problem)
                last = problem
        except Exception as exc:  # nats-py raises its own tree for connection failures
            problem = f"{type(exc).__name__}: {exc}"
            if problem != last:
                log.warning("waiting for %s: %s", what, problem)
                last = problem
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, CONNECT_RETRY_MAX)
    return False


async def run_agent(config: AgentConfig) -> int:
    signals = Signals()
    signals.install()
    keys = Keys(config.etcd.prefix)
    async with contextlib.AsyncExitStack() as stack:
        store = Store(config.etcd.endpoints, config.etcd.timeout)
        stack.push_async_callback(store.close)
        await store.connect()
        bus = Bus(config.nats, config.output, config.node_name)
        if (
            await until_ready(f"NATS at {','.join(config.nats.urls)}", bus.connect, signals.stop)
            is None
        ):
            return 0
        stack.push_async_callback(bus.close)
        session = Session(store, config.node_ttl)
        etcd_where = f"etcd at {','.join(config.etcd.endpoints)}"
        if not await until_ready(etcd_where, session.start, signals.stop):
            return 0
        stack.push_async_callback(session.revoke)
        return await _serve(config, store, keys, bus, session, signals)
    return 0  # pragma: no cover - the stack's exit is above


async def _serve(
    config: AgentConfig, store: Store, keys: Keys, bus: Bus, session: Session, signals: Signals
) -> int:
    jobs = JobStore(store, keys)
    worker = Worker(config, jobs, bus, lambda: session.lease_id)
    registry = Registry(store, keys, session, config, worker.usage)
    if not await until_ready("node registration", registry.register, signals.stop):
        return 0
    election = Election(store, keys, session, config.node_name)
    api = Api(config, store, keys, jobs, bus, election)
    await api.start()

    async def lead(fence: Sequence[Compare]) -> None:
        await Scheduler(config, store, keys, jobs, bus, fence).run()

    log.info(
        "agent %s ready: %g CPUs, lease %x",
        config.node_name,
        registry.record().cpus,
        session.lease_id,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(session.keep_alive(), name="lease"),
                tg.create_task(worker.follow_lease(session), name="lease-follower"),
                tg.create_task(registry.run(), name="registry"),
                tg.create_task(election.run(lead), name="election"),
            ]
            worker_task = tg.create_task(worker.run(), name="worker")
            await signals.stop.wait()
            await _drain(config, registry, worker, worker_task, signals)
            for task in background:
                task.cancel()
    finally:
        await api.stop()
    log.info("stopped: %d finished, %d handed back", worker.finished, worker.handed_back)
    return 0


async def _drain(
    config: AgentConfig,
    registry: Registry,
    worker: Worker,
    worker_task: asyncio.Task[None],
    signals: Signals,
) -> None:
    log.info("stopping: no new jobs; draining")
    worker.accepting = False
    await registry.set_draining()
    await worker_task
    timeout = 0.0 if signals.hurry.is_set() else config.jobs.drain_timeout
    hurry = asyncio.create_task(signals.hurry.wait())
    drain = asyncio.create_task(worker.drain(timeout))
    await asyncio.wait({hurry, drain}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        log.info("second signal: stopping now")
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await worker.drain(0)
    hurry.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hurry
