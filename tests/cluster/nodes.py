"""Real `pumplink serve` nodes of one cluster: one ZooKeeper root, database, broker prefix,
JWT secret and cluster secret; each its own name and port."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import secrets
import subprocess
import threading
import uuid

import psycopg2
import pytest
import requests
from kazoo.client import KazooClient

from pumplink.cluster.membership import cluster_map
from pumplink.cluster.partitions import PARTITIONS
from tests.cluster.fleet import Fleet
from tests.conftest import TEST_LIMITS
from tests.support import MQTT_URL, PUMPLINK_BIN, Server, free_port, server_env, wait_until

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


class Sampler:
    """Every 100 ms, each live node's partitions. Nodes are read in order, then the first ones
    again: a partition counts as held twice only if the earlier node still held it after the
    later one showed it (a clean handover between two reads is not a double owner)."""

    def __init__(self, nodes: dict[str, Server]):
        self.nodes = nodes
        self.dead: set[str] = set()
        self.samples = 0
        self.doubles: list[tuple[int, str, str]] = []
        self.last: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self, name: str) -> set[int] | None:
        try:
            body = requests.get(f"{self.nodes[name].base}/api/v1/ready", timeout=2).json()
        except (requests.RequestException, ValueError):
            return None
        cluster = body.get("cluster") or {}
        return set(cluster.get("partitions", []))

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            live = [n for n in self.nodes if n not in self.dead]
            first = {n: self.read(n) for n in live}
            again = {n: self.read(n) for n in live}
            for i, a in enumerate(live):
                for b in live[i + 1:]:
                    if first[a] is None or first[b] is None or again[a] is None:
                        continue
                    for p in first[a] & first[b] & again[a]:
                        self.doubles.append((p, a, b))
            self.last = {n: s for n, s in again.items() if s is not None}
            self.samples += 1

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def owners(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
        for name, parts in self.last.items():
            for p in parts:
                out[p].append(name)
        return out

    def settled(self, live) -> bool:
        """Every partition held by exactly one of ``live``, as the last sample saw it."""
        owners = self.owners()
        return set(self.last) >= set(live) and all(len(o) == 1 and o[0] in live for o in owners.values())


def sql(url: str, query: str, params=()) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@contextlib.contextmanager
def pumped_cluster(names, *, url: str, zookeeper, run_tag: str, log_dir, pumps: int, session_s: float,
                   label: str, no_timer=lambda ids: (), **env):
    """Nodes ``names`` on one database with ``pumps`` devices (rows inserted before start-up, a
    Fleet answering for them; ``no_timer(ids)`` are pumps that keep no OFF timer of their own)
    and a Sampler of every node's /ready, once every partition has one owner; ``env``: more
    settings for every node. Yields ``{"url", "ids", "fleet", "nodes", "sampler"}``."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"pltest-{run_tag}-{label}{tag}"
    base = server_env(url, prefix, **TEST_LIMITS, PUMPLINK_ZOOKEEPER=f"{zookeeper.hosts}/pl-{tag}",
                      PUMPLINK_CLUSTER_SECRET=secrets.token_urlsafe(40), PUMPLINK_ZK_SESSION_TIMEOUT_S=session_s,
                      PUMPLINK_ACK_TIMEOUT_S=2, **env)
    subprocess.run([PUMPLINK_BIN, "migrate"], env=base, check=True, capture_output=True, timeout=60)
    rows = sql(url, "INSERT INTO device (name, protocol, max_run_minutes, created_at, site_id) "
                    "SELECT 'Cluster pump ' || n, 'pumplink', 1440, now(), (SELECT id FROM site WHERE is_default) "
                    "FROM generate_series(1, %s) AS n RETURNING id", (pumps,))
    ids = sorted(i for (i,) in rows)
    fleet = Fleet(MQTT_URL, prefix, ids, clients=3)
    fleet.no_timer.update(no_timer(ids))
    nodes = {name: Server({**base, "PUMPLINK_BIND": f"127.0.0.1:{free_port()}", "PUMPLINK_NODE_NAME": name},
                          log_dir / f"{label}-{tag}-{name}.log") for name in names}
    sampler = Sampler(nodes)
    try:
        fleet.start()
        for server in nodes.values():
            server.start(timeout=60)
        sampler.start()
        wait_until(lambda: sampler.settled(names), timeout=30, interval=0.1, what="every partition owned once")
        yield {"url": url, "ids": ids, "fleet": fleet, "nodes": nodes, "sampler": sampler}
    finally:
        sampler.stop()
        for server in nodes.values():
            server.stop()
        fleet.close()
