"""Which partition a device is in, and which live node owns which partition (pure, no I/O).

Devices hash into a fixed number of partitions; partitions are assigned to nodes by rendezvous
(highest random weight) hashing with a quota per node, so every node owns ⌊P/N⌋ or ⌈P/N⌉
partitions and a join or leave moves few of them. Every node computes the same answer from
the same member list: the assignment is a function, not a negotiation.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping

PARTITIONS = 64


def _hash(text: str) -> int:
    # blake2b, not hash(): Python's str hash is salted per process, and every node must agree.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def partition_of(device_id: int, partitions: int = PARTITIONS) -> int:
    """The partition of a device: stable across processes, machines and releases."""
    return _hash(f"device:{device_id}") % partitions


def assign(nodes: Iterable[str], partitions: int = PARTITIONS) -> dict[str, frozenset[int]]:
    """Each node's partitions. Deterministic, fair (sizes differ by at most one), sticky.

    Pairs (node, partition) are taken in order of their rendezvous weight; a partition goes to
    its heaviest node that is still under quota. Which nodes get the one extra partition is
    itself decided by a hash of the node's name, so it rarely changes when others come and go.
    """
    members = sorted(set(nodes))
    if not members:
        return {}
    base, extra = divmod(partitions, len(members))
    by_luck = sorted(members, key=lambda node: (_hash(f"extra:{node}"), node))
    quota = {node: base + (1 if rank < extra else 0) for rank, node in enumerate(by_luck)}
    pairs = sorted(
        ((_hash(f"{node}/{p}"), node, p) for node in members for p in range(partitions)),
        reverse=True,
    )
    owner: dict[int, str] = {}
    taken = {node: 0 for node in members}
    for _, node, p in pairs:
        if p in owner or taken[node] >= quota[node]:
            continue
        owner[p] = node
        taken[node] += 1
    mine: dict[str, set[int]] = {node: set() for node in members}
    for p, node in owner.items():
        mine[node].add(p)
    return {node: frozenset(ps) for node, ps in mine.items()}


def owner_of(assignment: Mapping[str, frozenset[int]]) -> dict[int, str]:
    """The same assignment seen from the partitions' side."""
    return {p: node for node, ps in assignment.items() for p in ps}


def moved(before: Mapping[str, frozenset[int]], after: Mapping[str, frozenset[int]]) -> set[int]:
    """Partitions whose owner differs between two assignments (new or gone ones included)."""
    old, new = owner_of(before), owner_of(after)
    return {p for p in old.keys() | new.keys() if old.get(p) != new.get(p)}
