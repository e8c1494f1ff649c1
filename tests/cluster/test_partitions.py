"""The partition map: pure functions, no ZooKeeper."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from pumplink.cluster.partitions import PARTITIONS, assign, moved, owner_of, partition_of


def names(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"node-{rng.getrandbits(32):08x}:8080" for _ in range(n)]


def test_a_device_is_always_in_the_same_partition_even_in_another_process():
    here = [partition_of(d) for d in range(1, 200)]
    code = "from pumplink.cluster.partitions import partition_of; print([partition_of(d) for d in range(1, 200)])"
    # A fresh interpreter has another str-hash salt: the map must not depend on it.
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()
    assert all(0 <= p < PARTITIONS for p in here)


def test_devices_spread_over_all_partitions():
    counts = Counter(partition_of(d) for d in range(1, 6401))
    assert len(counts) == PARTITIONS
    assert max(counts.values()) < 2.5 * 100 and min(counts.values()) > 100 / 2.5


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 64, 80])
def test_every_partition_has_exactly_one_owner_and_shares_differ_by_at_most_one(n):
    nodes = names(n, seed=n)
    assignment = assign(nodes)
    owners = owner_of(assignment)
    assert sorted(owners) == list(range(PARTITIONS))
    assert sum(len(ps) for ps in assignment.values()) == PARTITIONS
    sizes = [len(assignment[node]) for node in nodes]
    assert max(sizes) - min(sizes) <= 1
    assert max(sizes) == -(-PARTITIONS // n)


def test_the_assignment_depends_only_on_the_set_of_members():
    nodes = names(4, seed=1)
    assert assign(nodes) == assign(list(reversed(nodes))) == assign(nodes + nodes[:1])
    assert assign([]) == {}


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_a_join_moves_few_partitions(n):
    # Ideal: the newcomer takes P/(n+1) and nothing else moves. Modulo placement would move ~all.
    for seed in range(30):
        nodes = names(n + 1, seed=100 * n + seed)
        before, after = assign(nodes[:-1]), assign(nodes)
        changed = moved(before, after)
        assert changed >= after[nodes[-1]]
        assert len(changed) <= 1.75 * PARTITIONS / (n + 1)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_a_leave_moves_the_leavers_partitions_and_few_others(n):
    for seed in range(30):
        nodes = names(n, seed=1000 * n + seed)
        before, after = assign(nodes), assign(nodes[1:])
        changed = moved(before, after)
        assert changed >= before[nodes[0]]
        assert len(changed) <= 1.5 * len(before[nodes[0]])
