"""Fencing tokens in PostgreSQL: a write for a device commits only under its partition's epoch.

A ZooKeeper lock alone does not stop a node that was paused past its session from acting on
an old belief (Kleppmann, "How to do distributed locking"). So the database keeps, per
partition, the epoch of its newest owner (``partition_epoch``, migration 5):

- a new owner ``claim``s the partition (``claim_all``: every partition of a handover's batch at
  once): the row's epoch rises to its own, only upwards;
- every device transaction ``check``s its (partition, epoch) first, ``FOR SHARE``: a stale
  owner's write is refused, and a takeover's claim waits for in-flight writes of the old owner
  to end, then refuses every later one.

Single node: none of this runs (no fence, no check).
"""

from __future__ import annotations

from typing import Iterable

from pumplink.errors import Unavailable

Fence = tuple[int, int]  # (partition, epoch)


class Fenced(Unavailable):
    """A write under an epoch that is no longer the partition's: refused, nothing written."""

    code = "partition_moved"

    def __init__(self, partition: int, epoch: int):
        super().__init__("This device's partition has moved to another server; try again in a moment.",
                         retry_after=1)
        self.partition, self.epoch = partition, epoch


def claim(db, partition: int, epoch: int, wait_s: float = 10.0) -> bool:
    """Raise the partition's epoch to ``epoch``; False when it is already as high (a newer owner).
    It waits for the old owner's writes in flight (their FOR SHARE), at most ``wait_s``: a frozen
    old owner's transaction is ended by PostgreSQL (idle_in_transaction_session_timeout, set in
    cluster mode), and a claim that gave up is tried again by the Member."""
    return partition in claim_all(db, {partition: epoch}, wait_s)


def claim_all(db, epochs: dict[int, int], wait_s: float = 10.0) -> set[int]:
    """``claim`` for several partitions in one statement (a handover's batch): the partitions whose
    epoch rose. Rows are locked in partition order, as ``refused`` share-locks them, so a batch
    and a writer's check never wait on each other in a cycle. A lock wait past ``wait_s`` fails
    the whole batch (nothing claimed)."""
    if not epochs:
        return set()
    wanted = sorted(epochs.items())
    values = ", ".join(["(%s, %s)"] * len(wanted))
    with db.atomic():
        db.execute_sql(f"SET LOCAL lock_timeout = {int(wait_s * 1000)}")
        cursor = db.execute_sql(
            f"INSERT INTO partition_epoch (partition, epoch) VALUES {values} "
            "ON CONFLICT (partition) DO UPDATE SET epoch = EXCLUDED.epoch "
            "WHERE partition_epoch.epoch < EXCLUDED.epoch RETURNING partition",
            [x for pair in wanted for x in pair])
        return {int(p) for (p,) in cursor.fetchall()}


def refused(db, fences: Iterable[Fence]) -> set[Fence]:
    """Inside the caller's transaction: which of ``fences`` are no longer current. The current
    ones' rows stay share-locked until the transaction ends, so no claim overtakes them."""
    wanted = sorted(set(fences))
    if not wanted:
        return set()
    values = ", ".join(["(%s, %s)"] * len(wanted))
    params = [x for fence in wanted for x in fence]
    cursor = db.execute_sql(
        f"SELECT partition, epoch FROM partition_epoch WHERE (partition, epoch) IN ({values}) "
        "ORDER BY partition FOR SHARE", params)
    current = {(int(p), int(e)) for p, e in cursor.fetchall()}
    return set(wanted) - current


def check(db, fence: Fence | None) -> None:
    """One device's transaction: raises ``Fenced`` unless its epoch is the partition's."""
    if fence is not None and refused(db, [fence]):
        raise Fenced(*fence)


def current(db, partition: int) -> int | None:
    """The partition's epoch as the database holds it (for status and tests)."""
    row = db.execute_sql("SELECT epoch FROM partition_epoch WHERE partition = %s", (partition,)).fetchone()
    return int(row[0]) if row else None
