"""Fixtures that run real etcd, NATS and agent processes on free ports."""

from __future__ import annotations

import os
import sys
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apiclient import ApiClient
from schedagent.dev.cluster import LocalCluster
from schedagent.dev.procs import ETCD_BIN, NATS_BIN, EtcdServer, ManagedProcess, NatsServer
from schedagent.etcd.store import Store

ClusterFactory = Callable[..., LocalCluster]
S = TypeVar("S", bound=ManagedProcess)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Fixtures read item.rep_setup / item.rep_call at teardown to know if the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = (getattr(request.node, f"rep_{when}", None) for when in ("setup", "call"))
    return any(report is not None and report.failed for report in reports)


def _dump_logs(processes: Iterable[ManagedProcess]) -> None:
    # Written at teardown, so pytest shows it under "Captured stderr teardown" of
    # the failed test: the only view CI gives into the child processes.
    for proc in processes:
        lines = 30 if proc.name not in ("etcd", "nats") else 15
        sys.stderr.write(
            f"\n----- {proc.name} (pid {proc.pid}, exit {proc.returncode}): "
            f"last {lines} lines of {proc.log_path}\n{proc.log_tail(lines)}\n"
        )


def _require(binary: str) -> None:
    # Fail, not skip: a missing server must not turn the integration suite green.
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is not installed; run scripts/setup", pytrace=False)


def _running(server: S, request: pytest.FixtureRequest) -> Iterator[S]:
    """Start server, hand it to the test, then stop it (logs shown if the test failed)."""
    with server:
        yield server
        if _test_failed(request):
            _dump_logs([server])


@pytest.fixture
def etcd_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EtcdServer]:
    """A running single-member etcd on free ports; stopped after the test."""
    _require(ETCD_BIN)
    yield from _running(EtcdServer(tmp_path / "etcd"), request)


@pytest.fixture
def nats_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NatsServer]:
    """A running nats-server with JetStream on a free port; stopped after the test."""
    _require(NATS_BIN)
    yield from _running(NatsServer(tmp_path / "nats"), request)


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """make(agents=3, *, agent_overrides=None, labels=None, cpus=None, start=True, **kw).

    labels and cpus map a node name to that agent's labels / cpus; other keywords go
    to LocalCluster. Every cluster made is stopped at teardown, even after a failure.
    make() blocks; in an async test use `await asyncio.to_thread(make, ...)` if the
    event loop must keep running meanwhile.
    """
    _require(ETCD_BIN)
    _require(NATS_BIN)
    clusters: list[LocalCluster] = []

    def make(
        agents: int | Sequence[str] = 3,
        *,
        agent_overrides: Mapping[str, Any] | None = None,
        labels: Mapping[str, Mapping[str, str]] | None = None,
        cpus: Mapping[str, float] | None = None,
        per_agent: Mapping[str, Mapping[str, Any]] | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> LocalCluster:
        per: dict[str, dict[str, Any]] = {n: dict(o) for n, o in (per_agent or {}).items()}
        for name, node_labels in (labels or {}).items():
            per.setdefault(name, {})["labels"] = dict(node_labels)
        for name, node_cpus in (cpus or {}).items():
            per.setdefault(name, {})["cpus"] = node_cpus
        base_dir = tmp_path / f"cluster{len(clusters) + 1}"
        cluster = LocalCluster(
            agents, agent_overrides=agent_overrides, per_agent=per, base_dir=base_dir, **kwargs
        )
        clusters.append(cluster)  # before start(), so teardown also covers a failed start
        if start:
            cluster.start()
        return cluster

    yield make
    failed = _test_failed(request)
    errors: list[Exception] = []
    for cluster in reversed(clusters):
        if failed:
            _dump_logs(cluster.processes())
        try:
            cluster.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise ExceptionGroup("cluster_factory teardown", errors)


# Over a test module's own `cluster` fixture (each module says how many agents, how set).
@pytest.fixture
async def api(cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    """A client of the module's cluster's API, as schedctl talks to it."""
    async with ApiClient(cluster.nats_url) as client:
        yield client


@pytest.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[Store]:
    """Direct access to the module's cluster's etcd: what a compromised leader has."""
    etcd = Store([cluster.etcd_endpoint])
    await etcd.connect()
    yield etcd
    await etcd.close()
