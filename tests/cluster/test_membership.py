"""Membership and partition ownership against a real ZooKeeper the tests start themselves."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from pumplink.cluster.membership import Member, Session, cluster_map
from pumplink.cluster.partitions import PARTITIONS, assign, partition_of
from tests.cluster.zookeeper import ZooKeeper

WAIT_S = 20.0  # generous: a loaded 2-core machine; every wait ends as soon as its event happens
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def members(zookeeper, zk_root):
    """Starts members under this test's root; stops those still running at the end."""
    made: list[Member] = []

    def make(node: str, session_timeout_s: float = 10.0, hosts: str | None = None, **callbacks) -> Member:
        member = Member(hosts or zookeeper.hosts, node, f"http://{node}", root=zk_root,
                        session_timeout_s=session_timeout_s, **callbacks)
        made.append(member)
        return member.start()

    yield make
    for member in made:
        if member.session is not Session.STOPPED:
            member.stop()


def owns_its_share(nodes):
    share = assign(nodes)
    return lambda member: set(member.owned()) == share[member.node]


def assert_each_partition_has_one_owner(observer, root, expected_nodes):
    cmap = cluster_map(observer, root)
    assert all(cmap["owners"][p] is not None for p in range(PARTITIONS))
    by_map = {node: set(info["partitions"]) for node, info in cmap["nodes"].items() if info["partitions"]}
    assert by_map == {node: set(ps) for node, ps in assign(expected_nodes).items()}
    return cmap


def test_three_members_share_the_partitions_fairly_and_each_has_one_owner(members, observer, zk_root):
    nodes = ["node-a:8080", "node-b:8080", "node-c:8080"]
    running = [members(node) for node in nodes]
    for member in running:
        assert member.wait_for(owns_its_share(nodes), WAIT_S), member.status()
    cmap = assert_each_partition_has_one_owner(observer, zk_root, nodes)
    assert sorted(len(info["partitions"]) for info in cmap["nodes"].values()) == [21, 21, 22]
    assert cmap["members"] == {node: f"http://{node}" for node in nodes}
    # What the device layer will ask: only the owner may send ON, and it knows the epoch.
    for device in range(1, 50):
        owners = [m for m in running if m.may_send_on(device)]
        assert len(owners) == 1
        assert owners[0].epoch_for(device) == cmap["owners"][partition_of(device)]["epoch"]
    status = running[0].status()
    assert status["session"] == "connected" and status["may_send_on"] is True
    assert status["partitions"] == running[0].owned()


def test_a_member_that_leaves_cleanly_hands_over_at_once(members, observer, zk_root):
    timeout = 15.0
    nodes = ["node-a:8080", "node-b:8080", "node-c:8080"]
    running = [members(node, session_timeout_s=timeout) for node in nodes]
    for member in running:
        assert member.wait_for(owns_its_share(nodes), WAIT_S)
    before = cluster_map(observer, zk_root)["owners"]
    leaving = running[0]
    theirs = set(leaving.owned())

    started = time.monotonic()
    leaving.stop()
    survivors = nodes[1:]
    for member in running[1:]:
        assert member.wait_for(owns_its_share(survivors), WAIT_S)
    took = time.monotonic() - started

    assert took < timeout / 3, f"handover took {took:.1f} s: it waited for the session to expire"
    assert leaving.session is Session.STOPPED and leaving.owned() == {}
    after = assert_each_partition_has_one_owner(observer, zk_root, survivors)["owners"]
    for p in theirs:
        assert after[p]["epoch"] > before[p]["epoch"]


def read_lines(proc) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if line == wanted:
            return


def start_member_process(hosts, node, root, session_timeout_s, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.member_process", hosts, node, root, str(session_timeout_s), *extra],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_under_gevent_a_member_uses_kazoos_gevent_handler_and_takes_its_partitions(zookeeper, zk_root, observer):
    proc = start_member_process(zookeeper.hosts, "green:8080", zk_root, 10.0, "gevent")
    try:
        lines = read_lines(proc)
        wait_line(lines, "SequentialGeventHandler", WAIT_S)
        wait_line(lines, f"owned {PARTITIONS}", WAIT_S)
        assert_each_partition_has_one_owner(observer, zk_root, ["green:8080"])
    finally:
        proc.kill()
        proc.wait(10)


def test_a_dead_members_partitions_move_only_after_its_session_expired(zookeeper, members, observer, zk_root):
    victim_timeout = 4.0
    nodes = ["node-a:8080", "node-b:8080", "victim:8080"]
    share = assign(nodes)
    takeovers: dict[int, tuple[float, int]] = {}

    def record(grants):
        takeovers.update({p: (time.monotonic(), epoch) for p, epoch in grants.items()})

    survivors = [members(node, on_acquired=record) for node in nodes[:2]]
    for member in survivors:
        assert member.wait_for(owns_its_share(nodes[:2]), WAIT_S)
    proc = start_member_process(zookeeper.hosts, "victim:8080", zk_root, victim_timeout)
    try:
        lines = read_lines(proc)  # it joins a party of three at once, so it only ever acquires
        wait_line(lines, f"owned {len(share['victim:8080'])}", WAIT_S)
        for member in survivors:
            assert member.wait_for(owns_its_share(nodes), WAIT_S)
        before = assert_each_partition_has_one_owner(observer, zk_root, nodes)["owners"]
        theirs = share["victim:8080"]
        takeovers.clear()

        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)  # no clean leave: its session lives on until ZooKeeper expires it
        proc.wait(10)
        for member in survivors:
            assert member.wait_for(owns_its_share(nodes[:2]), victim_timeout + WAIT_S)

        first_takeover = min(takeovers[p][0] for p in theirs)
        # ZooKeeper expires a session no sooner than ~2/3 of its timeout after its last ping.
        assert first_takeover - killed >= victim_timeout / 2, "a partition moved before the session expired"
        assert "victim:8080" not in cluster_map(observer, zk_root)["members"]
        for p in theirs:
            assert takeovers[p][1] > before[p]["epoch"], "the new owner's epoch must be higher"
        assert_each_partition_has_one_owner(observer, zk_root, nodes[:2])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_suspended_member_must_not_send_on_and_resumes_with_the_same_epochs(tmp_path, members):
    server = ZooKeeper(tmp_path).start()  # its own server: this test takes it away
    member = None
    try:
        member = members("solo:8080", session_timeout_s=15.0, hosts=server.hosts)
        assert member.wait_for(lambda m: len(m.owned()) == PARTITIONS, WAIT_S)
        epochs = member.owned()
        assert member.may_send_on(7)

        server.kill()
        assert member.wait_for(lambda m: m.session is Session.SUSPENDED, WAIT_S)
        assert not any(member.may_send_on(device) for device in range(1, 200))
        assert member.status()["session"] == "suspended" and member.status()["may_send_on"] is False

        server.start()  # same data: the session is still alive, and so are its locks
        assert member.wait_for(lambda m: m.session is Session.CONNECTED, WAIT_S)
        assert member.may_send_on(7)
        assert member.owned() == epochs
    finally:
        if member is not None and server.proc is not None:
            member.stop()
        server.stop()


def test_a_member_whose_session_expired_gives_up_everything_then_owns_again_with_higher_epochs(
    zookeeper, members
):
    released, acquired = [], []
    member = members("solo:8080", session_timeout_s=10.0,
                     on_released=released.append, on_acquired=acquired.extend)
    assert member.wait_for(lambda m: len(m.owned()) == PARTITIONS, WAIT_S)
    epochs, session = member.owned(), member.client.client_id
    acquired.clear()

    # ZooKeeper's own way to expire a session: a second client attaches to it and closes it.
    twin = KazooClient(hosts=zookeeper.hosts, client_id=session, timeout=10)
    twin.start(timeout=15)
    twin.stop()
    twin.close()

    def again(m):
        return m.session is Session.CONNECTED and len(m.owned()) == len(acquired) == PARTITIONS
    assert member.wait_for(again, WAIT_S)
    assert member.client.client_id[0] != session[0]
    assert sorted(released) == list(range(PARTITIONS)), "the device layer must hear of every lost partition"
    assert all(member.owned()[p] > epochs[p] for p in range(PARTITIONS))


def test_a_member_suspended_longer_than_its_session_timeout_gives_up_its_partitions_locally(tmp_path, members):
    """It cannot hear LOST while cut off, but its session is surely expired by then: it treats
    every partition as lost at once. If the session survived after all, its old locks are given
    back and the partitions taken anew, under higher epochs."""
    server = ZooKeeper(tmp_path).start()
    released = []
    member = None
    try:
        member = members("solo:8080", session_timeout_s=3.0, hosts=server.hosts, on_released=released.append)
        assert member.wait_for(lambda m: len(m.owned()) == PARTITIONS, WAIT_S)
        epochs = member.owned()
        server.kill()
        assert member.wait_for(lambda m: m.session is Session.SUSPENDED, WAIT_S)
        suspended = time.monotonic()
        assert member.wait_for(lambda m: not m.owned() and len(released) == PARTITIONS, WAIT_S)
        assert 3.0 <= time.monotonic() - suspended + 0.5  # not before the timeout (measured from SUSPENDED seen)
        assert member.session is Session.SUSPENDED  # given up locally, without hearing from ZooKeeper
        assert sorted(released) == list(range(PARTITIONS))

        server.start()  # same data: the session may well be alive again; its old locks must not count
        assert member.wait_for(lambda m: m.session is Session.CONNECTED and len(m.owned()) == PARTITIONS, WAIT_S)
        assert all(member.owned()[p] > epochs[p] for p in range(PARTITIONS))
    finally:
        if member is not None and server.proc is not None:
            member.stop()
        server.stop()
