"""Three real nodes: an activation through any node starts the pump of a device owned by any
node, and every node lists every device the same way."""

from __future__ import annotations

import pytest

from pumplink.cluster.partitions import partition_of
from tests.cluster.nodes import running_cluster
from tests.conftest import World
from tests.support import wait_until

NAMES = ["node-a", "node-b", "node-c"]

# Three server processes, but one module of a few tests: `make test` runs it, so CI proves that a
# cluster serves at all; the rounds of kills and freezes (marked slow) run in `make test-cluster`.


@pytest.fixture(scope="module")
def three(pg_factory, zookeeper, run_tag, log_dir):
    with running_cluster(NAMES, database=pg_factory(), zookeeper=zookeeper, run_tag=run_tag,
                         log_dir=log_dir) as (nodes, owners):
        world = World(nodes[0])
        yield nodes, owners, world
        world.close()


def test_an_activation_through_any_node_starts_a_pump_owned_by_any_node(three):
    nodes, owners, world = three
    # Three devices per owner, one for each node to send the activation through.
    by_owner: dict[str, list[int]] = {name: [] for name in NAMES}
    while any(len(ids) < len(NAMES) for ids in by_owner.values()):
        device_id = world.device("Pump")
        owner = owners()[partition_of(device_id)]["node"]
        if len(by_owner[owner]) < len(NAMES):
            by_owner[owner].append(device_id)
    pumps = {d: world.pump(d) for ids in by_owner.values() for d in ids}
    user = world.user()
    apis = [node.api(user.token) for node in nodes]
    wait_until(lambda: all(d["state"] == "off" for d in apis[0].get("devices").json()["devices"] if d["id"] in pumps),
               what="every pump off")
    sent = {}
    for owner, ids in by_owner.items():
        for via, device_id in zip(apis, ids):
            r = via.post("activate", {"device_id": device_id, "duration_s": 1})
            assert r.status_code == 202, (owner, via.base, r.text)
            sent[device_id] = r.json()["activation"]["id"]
    for device_id, pump in pumps.items():
        pump.wait_for(lambda p: any(c["action"] == "on" for c in p.commands), what=f"ON for device {device_id}")
        pump.wait_for(lambda p: p.state == "off" and len(p.commands) >= 1, timeout=6, what="pump off again")
    for device_id, activation_id in sent.items():
        wait_until(lambda: apis[0].get(f"activations/{activation_id}").json()["state"] == "completed",
                   what=f"activation {activation_id} completed")
    # At rest every node lists the same devices the same way.
    lists = [api.get("devices").json()["devices"] for api in apis]
    assert lists[0] == lists[1] == lists[2] and set(pumps) <= {d["id"] for d in lists[0]}
