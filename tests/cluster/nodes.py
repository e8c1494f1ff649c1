"""Real `pumplink serve` nodes of one cluster: one ZooKeeper root, database, broker prefix,
JWT secret and cluster secret; each its own name and port."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import secrets
import uuid

import pytest
from kazoo.client import KazooClient

from pumplink.cluster.membership import cluster_map
from tests.conftest import TEST_LIMITS
from tests.support import Server, server_env, wait_until

WAIT_S = 30.0
_n = itertools.count()


@contextlib.contextmanager
def running_cluster(names, *, database: str, zookeeper, run_tag: str, log_dir, session_timeout_s: int = 4,
                    routing: bool = True, secret: str | None = None, **env_overrides):
    """Yields ``(nodes, owners)``: the started servers, and a function reading each partition's
    owner from ZooKeeper. Returns once every partition has an owner and every node owns some.
    ``routing=False``: the test needs only cluster mode's endpoints, not partitions owned."""
    # Until the nodes own partitions (h-cluster-own's cluster/node.py) there is nothing to route.
    owning = importlib.util.find_spec("pumplink.cluster.node") is not None
    if routing and not owning:
        pytest.skip("nodes do not own partitions yet")
    root = f"/pltest-{uuid.uuid4().hex[:12]}"
    prefix, jwt = f"pltest-{run_tag}-cl{next(_n)}", secrets.token_urlsafe(40)
    secret = secret or secrets.token_urlsafe(48)
    nodes: list[Server] = []
    observer = KazooClient(hosts=zookeeper.hosts, timeout=10)
    observer.start(timeout=15)
    try:
        for name in names:
            env = server_env(database, prefix, **TEST_LIMITS, PUMPLINK_ZOOKEEPER=zookeeper.hosts + root,
                             PUMPLINK_CLUSTER_SECRET=secret, PUMPLINK_NODE_NAME=name, PUMPLINK_JWT_SECRET=jwt,
                             PUMPLINK_ZK_SESSION_TIMEOUT_S=str(session_timeout_s), **env_overrides)
            env["PUMPLINK_INTERNAL_URL"] = "http://" + env["PUMPLINK_BIND"]
            node = Server(env, log_dir / f"cluster-{prefix}-{name}.log")
            node.name, node.prefix, node.legacy_base = name, prefix, env["PUMPLINK_LEGACY_BASE"]
            nodes.append(node)
            node.start()

        def owners():
            return cluster_map(observer, root)["owners"]

        if owning:
            def everyone_owns(now) -> bool:
                return all(o is not None for o in now.values()) and {o["node"] for o in now.values()} == set(names)

            wait_until(lambda: everyone_owns(owners()), timeout=WAIT_S, what="every node owns partitions")
        yield nodes, owners
    finally:
        for node in nodes:
            node.stop()
        observer.stop()
        observer.close()
