"""Where the gateway sends a device's call, read from a real ZooKeeper: the owner's own actor,
the owner's address, or a retryable 503 while nobody owns it."""

from __future__ import annotations

import pytest

from pumplink.cluster.membership import Member, Session, cluster_map
from pumplink.cluster.partitions import PARTITIONS, assign, partition_of
from pumplink.cluster.routing import Owners, Router
from pumplink.errors import Unavailable
from tests.support import wait_until

WAIT_S = 20.0


@pytest.fixture
def members(zookeeper, zk_root):
    made: list[Member] = []

    def make(node: str) -> Member:
        member = Member(zookeeper.hosts, node, f"http://{node}", root=zk_root, session_timeout_s=10)
        made.append(member)
        return member.start()

    yield make
    for member in made:
        if member.session is not Session.STOPPED:
            member.stop()


def first_device_in(partitions) -> int:
    return next(d for d in range(1, 10_000) if partition_of(d) in partitions)


def test_each_device_goes_to_its_owner_and_follows_a_handover(members, observer, zk_root):
    nodes = ["node-a", "node-b"]
    a, b = members(nodes[0]), members(nodes[1])
    share = assign(nodes)
    for member in (a, b):
        assert member.wait_for(lambda m: set(m.owned()) == share[m.node], WAIT_S)
    owners = Owners(a.client, zk_root)
    router = Router(a, owners, forwarder=None)
    cmap = cluster_map(observer, zk_root)
    assert {p: owners.owner(p) for p in range(PARTITIONS)} == {p: o["node"] for p, o in cmap["owners"].items()}
    assert owners.members() == {"node-a": "http://node-a", "node-b": "http://node-b"}

    mine, theirs = first_device_in(share["node-a"]), first_device_in(share["node-b"])
    assert router.is_local(mine) is True
    assert router.is_local(theirs) is False and router.address(theirs) == "http://node-b"
    # A call forwarded to a node that does not own the device is not forwarded again.
    with pytest.raises(Unavailable) as moving:
        router.as_owner().is_local(theirs)
    assert moving.value.code == "partition_moving" and moving.value.retry_after

    # b leaves: the cached owners and members follow ZooKeeper's watches, and a owns everything.
    b.stop()
    assert a.wait_for(lambda m: len(m.owned()) == PARTITIONS, WAIT_S)
    wait_until(lambda: owners.owner(partition_of(theirs)) == "node-a", what="owner of b's partition is a")
    wait_until(lambda: owners.members() == {"node-a": "http://node-a"}, what="b gone from the members")
    assert router.is_local(theirs) is True


def test_a_partition_nobody_owns_is_a_retryable_503(members, observer, zookeeper, zk_root):
    alone = Member(zookeeper.hosts, "node-x", "http://node-x", root=zk_root)  # never started: owns nothing
    router = Router(alone, Owners(observer, zk_root), forwarder=None)
    with pytest.raises(Unavailable) as moving:
        router.address(7)
    assert (moving.value.status, moving.value.code, moving.value.retry_after) == (503, "partition_moving", 1)
    # The owner this node itself is taking over (its recovery still running) is not asked yet.
    a = members("node-x")
    assert a.wait_for(lambda m: len(m.owned()) == PARTITIONS, WAIT_S)
    router = Router(alone, Owners(observer, zk_root), forwarder=None)
    with pytest.raises(Unavailable) as moving:
        router.address(7)
    assert "taking it over" in moving.value.message
