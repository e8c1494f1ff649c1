"""The partitions' locks on ZooKeeper, many at a time (kazoo's ``Lock`` recipe, one per partition).

A lock znode is ``<root>/partitions/<p>/<uuid>__lock__<sequence>`` and holds its node's name; the
lowest sequence holds the partition, and that sequence is the partition's epoch.

- ``free``: of many partitions, those no lock znode holds, every holder read at once (one round
  trip for all); each one still held is watched, so its holder's going wakes the caller.
- ``take``: tries the locks of many partitions at once, each kazoo ``Lock`` in a greenlet of its
  own (a thread without gevent), so their round trips overlap.

Why: a planned handover frees a leaving node's partitions one after another; trying every lock
one by one, again at each release, took longer per pass than the leaving node took to free them
(docs/decisions.md).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Mapping

from kazoo.exceptions import KazooException, NoNodeError

log = logging.getLogger(__name__)

LOCK_MARK = "__lock__"


def sequence(lock_node: str) -> int:
    return int(lock_node[-10:])


def holder(children: Iterable[str]) -> str | None:
    """Of a partition's children, the lock znode that holds it: the lowest sequence among contenders."""
    locks = [c for c in children if LOCK_MARK in c]
    return min(locks, key=sequence) if locks else None


def free(client, paths: Mapping[int, str], watch: Callable) -> list[int]:
    """Of the partitions ``paths`` (p -> its znode), those no lock holds. ``watch`` is set on the
    holder of each other one, and fires when that holder goes."""
    reads = {p: client.get_children_async(path) for p, path in paths.items()}
    out, held = [], {}
    for p, read in reads.items():
        try:
            name = holder(read.get())
        except NoNodeError:
            name = None  # never locked yet: the lock recipe creates it
        if name is None:
            out.append(p)
        else:
            held[p] = client.exists_async(f"{paths[p]}/{name}", watch=watch)
    out += [p for p, exists in held.items() if exists.get() is None]  # gone meanwhile
    return sorted(out)


def take(client, paths: Mapping[int, str], identifier: str) -> dict[int, tuple[object, int]]:
    """Tries every lock of ``paths`` without blocking, all at once: those taken, with their epochs.
    Another node may win a lock between ``free`` and here: that one is simply not taken. If any
    try fails (the connection), the locks taken are given back and the error raised."""
    handler = client.handler
    tries = {}
    for p, path in paths.items():
        lock, result = client.Lock(path, identifier=identifier), handler.async_result()
        handler.spawn(_try, lock, result)
        tries[p] = (lock, result)
    taken, error = {}, None
    for p, (lock, result) in tries.items():
        try:
            if result.get():
                taken[p] = (lock, sequence(lock.node))
        except Exception as exc:  # noqa: BLE001 - raised below, once every try has ended
            error = exc
    if error is not None:
        for lock, _ in taken.values():
            give_back(lock)
        raise error
    return taken


def _try(lock, result) -> None:
    try:
        result.set(lock.acquire(blocking=False))
    except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
        result.set_exception(exc)


def give_back(lock) -> None:
    """Releases a lock we took; if that fails, the session's end removes it anyway."""
    try:
        lock.release()
    except KazooException:
        log.debug("cluster: giving a lock back failed", exc_info=True)
