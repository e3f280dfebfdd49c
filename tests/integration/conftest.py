"""Fixtures over a test module's own `cluster` (each module says how many agents, how set)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from apiclient import ApiClient
from schedagent.dev.cluster import LocalCluster
from schedagent.etcd.store import Store


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
