"""ZooKeeper for the cluster tests: one server for the module, each test under its own root."""

from __future__ import annotations

import uuid

import pytest
from kazoo.client import KazooClient

from tests.cluster.zookeeper import ZooKeeper


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory):
    server = ZooKeeper(tmp_path_factory.mktemp("zookeeper")).start()
    yield server
    server.stop()


@pytest.fixture
def zk_root() -> str:
    return f"/pltest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def observer(zookeeper):
    """A plain client that reads what ZooKeeper holds, as `cluster status` would."""
    client = KazooClient(hosts=zookeeper.hosts, timeout=10)
    client.start(timeout=15)
    yield client
    client.stop()
    client.close()
