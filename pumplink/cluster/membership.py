"""This node's membership and partition ownership on ZooKeeper, through kazoo's recipes.

- Membership: kazoo's ``Party`` under ``<root>/members`` (one ephemeral znode per node, holding
  its name and internal address). Every node reads the party and computes the same assignment
  (``partitions.assign``).
- Ownership: one kazoo ``Lock`` per partition under ``<root>/partitions/<p>``. A node takes the
  locks of the partitions assigned to it and gives back those it no longer has. The lock's
  znode is ephemeral and sequential: its sequence number is the partition's **epoch**, a
  fencing token that only grows (ZooKeeper numbers a parent's children in order, and the
  partition's znode is never deleted).
- A dead node's locks and party znode go only when ZooKeeper expires its session, so its
  partitions move only then. A node leaving cleanly (``stop``) releases at once.
- Session SUSPENDED: ``may_send_on`` is False at once (OFF stays allowed); the locks may still
  be ours, and are again if the session comes back. LOST: every partition is gone.
- SUSPENDED for longer than the session timeout: ZooKeeper has surely expired the session by
  now, though we cannot hear it; every partition counts as lost here at once (``on_released``),
  and if the session does come back its old locks are given back and taken anew (new epochs).

Callbacks (``on_acquired({p: epoch})``, ``on_released(p)``) run in the member's own worker, never
in kazoo's connection thread. ``on_acquired`` gets at once every partition one pass took the lock
of (their devices recover in one batch), before they count as owned; those it returns (refused),
or all if it raises, are given back and tried again soon. ``on_released`` runs before the lock is
given back. A pass tries only the locks nobody holds, all at once (locks.py), and watches the others.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import KazooState

from pumplink.cluster import locks
from pumplink.cluster.partitions import PARTITIONS, assign, partition_of

log = logging.getLogger(__name__)

RETRY_AFTER_ERROR_S = 0.5
_PARTY_MARK = "__party__"


class Session(str, enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    SUSPENDED = "suspended"  # connection lost, session may still live: no ON
    LOST = "lost"  # session expired: nothing is ours any more
    STOPPED = "stopped"


def make_handler():
    """kazoo's gevent handler when the process runs under gevent (the server), else threads."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        monkey = None
    if monkey is not None and monkey.is_module_patched("socket"):
        from kazoo.handlers.gevent import SequentialGeventHandler

        return SequentialGeventHandler()
    from kazoo.handlers.threading import SequentialThreadingHandler

    return SequentialThreadingHandler()


def make_client(hosts: str, session_timeout_s: float) -> KazooClient:
    # Reconnect quickly (≤ 1 s apart): a session only survives if we are back before it expires.
    return KazooClient(hosts=hosts, timeout=session_timeout_s, handler=make_handler(),
                       connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0})


class Member:
    """One node: joins the party, owns the partitions assigned to it, follows the session."""

    def __init__(
        self,
        hosts: str,
        node: str,
        address: str,
        *,
        root: str = "/pumplink",
        session_timeout_s: float = 10.0,
        partitions: int = PARTITIONS,
        on_acquired: Callable[[dict[int, int]], Iterable[int] | None] | None = None,
        on_released: Callable[[int], None] | None = None,
    ) -> None:
        self.node = node
        self.address = address
        self.partitions = partitions
        self._root = root.rstrip("/")
        self._members_path = f"{self._root}/members"
        self._on_acquired = on_acquired or (lambda grants: None)
        self._on_released = on_released or (lambda p: None)
        self.session_timeout_s = session_timeout_s
        self.client = make_client(hosts, session_timeout_s)
        self._party = self.client.Party(self._members_path, json.dumps({"node": node, "address": address}))
        self._session = Session.CONNECTING
        self._joined = False
        self._held: Mapping[int, tuple[object, int]] = MappingProxyType({})  # p -> (Lock, epoch)
        self._lost: set[int] = set()  # taken by a LOST session; told to on_released by the worker
        self._stale: list = []  # locks given up locally (suspended too long): released once connected
        self._suspended_at: float | None = None
        self._stopping = False
        self._changed = threading.Condition()
        self._wake = self.client.handler.event_object()
        self._mutex = self.client.handler.lock_object()
        self._worker = None

    # -- what the device layer reads -------------------------------------------------------
    @property
    def session(self) -> Session:
        return self._session

    def owned(self) -> dict[int, int]:
        """Partitions this node holds the lock of, with their epochs."""
        return {p: epoch for p, (_, epoch) in self._held.items()}

    def epoch_for(self, device_id: int) -> int | None:
        held = self._held.get(partition_of(device_id, self.partitions))
        return held[1] if held else None

    def may_send_on(self, device_id: int) -> bool:
        """Only while the session is healthy and the device's partition is ours. OFF is always safe."""
        return self._session is Session.CONNECTED and partition_of(device_id, self.partitions) in self._held

    def status(self) -> dict:
        owned = self.owned()
        return {
            "node": self.node,
            "address": self.address,
            "session": self._session.value,
            "may_send_on": self._session is Session.CONNECTED and bool(owned),
            "partitions": owned,
        }

    def wait_for(self, predicate: Callable[["Member"], bool], timeout: float) -> bool:
        """Waits until ``predicate(self)`` holds (re-checked on every change of session or ownership)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # -- life --------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "Member":
        self.client.add_listener(self._on_state)
        try:
            self.client.start(timeout=timeout)
        except Exception:
            self.client.stop()  # else kazoo keeps trying to connect in the background
            self.client.close()
            raise
        self._set_session(Session.CONNECTED)
        self._worker = self.client.handler.spawn(self._run)
        self._poke()
        return self

    def stop(self) -> None:
        """A planned leave: leave the party, give back every partition at once, close the session."""
        self._stopping = True
        self._poke()
        with self._mutex:
            try:
                if self._session is Session.CONNECTED:
                    self._party.leave()
                    for p in sorted(self._held):
                        self._release(p)
            except KazooException:
                log.warning("cluster: clean handover failed; partitions move when the session expires", exc_info=True)
            finally:
                self._set_held({})
                self.client.remove_listener(self._on_state)
                self._set_session(Session.STOPPED)
                self.client.stop()
                self.client.close()

    # -- kazoo's connection thread: only record and wake -------------------------------------
    def _on_state(self, state: str) -> bool:
        if state == KazooState.SUSPENDED:
            self._suspended_at = time.monotonic()
            self._set_session(Session.SUSPENDED)
        elif state == KazooState.LOST:
            with self._changed:
                self._lost |= set(self._held)
            self._joined = False
            self._set_held({})
            self._set_session(Session.LOST)
        elif state == KazooState.CONNECTED:
            self._suspended_at = None
            self._set_session(Session.CONNECTED)
        self._poke()
        return False  # keep listening

    def _poke(self, *_event) -> None:
        self._wake.set()

    def _set_session(self, session: Session) -> None:
        if session is not self._session:
            log.info("cluster: %s session %s", self.node, session.value)
        with self._changed:
            self._session = session
            self._changed.notify_all()

    def _set_held(self, held: Mapping[int, tuple[object, int]]) -> None:
        with self._changed:
            self._held = MappingProxyType(dict(held))
            self._changed.notify_all()

    # -- the worker: one reconcile at a time ---------------------------------------------------
    def _run(self) -> None:
        failed = False
        while not self._stopping:
            self._wake.wait(self._next_wait(failed))
            self._wake.clear()
            if self._stopping:
                break
            self._expire_if_suspended_too_long()
            with self._mutex:
                if self._stopping:
                    break
                try:
                    self._reconcile()
                    failed = False
                except (KazooException, Refused) as exc:
                    # Connection trouble also arrives as a state change; other errors retry soon.
                    log.info("cluster: %s reconcile failed (%r); retrying", self.node, exc)
                    failed = True
                except Exception:
                    log.exception("cluster: %s reconcile failed in a callback; retrying", self.node)
                    failed = True

    def _next_wait(self, failed: bool) -> float | None:
        waits = [RETRY_AFTER_ERROR_S] if failed else []
        suspended_at = self._suspended_at
        if suspended_at is not None and self._held:
            waits.append(max(0.0, suspended_at + self.session_timeout_s - time.monotonic()) + 0.05)
        return min(waits) if waits else None

    def _expire_if_suspended_too_long(self) -> None:
        suspended_at = self._suspended_at
        if (self._session is not Session.SUSPENDED or suspended_at is None or not self._held
                or time.monotonic() - suspended_at < self.session_timeout_s):
            return
        log.warning("cluster: %s suspended for over %.1fs: its partitions count as lost here", self.node,
                    self.session_timeout_s)
        with self._changed:
            self._lost |= set(self._held)
            self._stale.extend(lock for lock, _ in self._held.values())
        self._set_held({})

    def _reconcile(self) -> None:
        with self._changed:
            lost, self._lost = self._lost, set()
        for p in sorted(lost):
            self._on_released(p)
        if self._session is not Session.CONNECTED:
            return
        while self._stale:
            # Our locks from before a local expiry, if the session survived after all: give them
            # back, so a partition is taken again only through a new lock (a higher epoch).
            try:
                self._stale[0].release()
            except KazooException:
                log.debug("cluster: releasing a stale lock failed", exc_info=True)
            self._stale.pop(0)
        if not self._joined:
            self._party.join()
            self._joined = True
        wanted = assign(self._members(), self.partitions).get(self.node, frozenset())
        for p in sorted(set(self._held) - wanted):
            self._release(p)
        missing = wanted - set(self._held)
        if missing and self._session is Session.CONNECTED:
            paths = {p: self._partition_path(p) for p in sorted(missing)}
            self._acquire(locks.free(self.client, paths, self._poke))

    def _members(self) -> list[str]:
        children = self.client.get_children(self._members_path, watch=self._poke)
        reads = [self.client.get_async(f"{self._members_path}/{c}") for c in children if _PARTY_MARK in c]
        names = []
        for read in reads:
            try:
                names.append(json.loads(read.get()[0])["node"])
            except NoNodeError:
                continue  # left meanwhile
        return names

    def _partition_path(self, p: int) -> str:
        return f"{self._root}/partitions/{p}"

    def _acquire(self, free: list[int]) -> None:
        """Takes the locks of ``free`` at once, then hands them all to ``on_acquired``; only then
        do they count as owned."""
        taken = locks.take(self.client, {p: self._partition_path(p) for p in free}, self.node) if free else {}
        if len(taken) < len(free):
            self._poke()  # another node won one between the read and the try: look again
        if not taken:
            return
        try:
            refused = set(self._on_acquired({p: epoch for p, (_, epoch) in taken.items()}) or ())
        except BaseException:
            for lock, _ in taken.values():
                locks.give_back(lock)
            raise
        for p in refused & set(taken):
            locks.give_back(taken.pop(p)[0])
        if taken:
            self._set_held({**self._held, **taken})
            log.info("cluster: %s owns partitions %s", self.node,
                     ", ".join(f"{p} (epoch {epoch})" for p, (_, epoch) in sorted(taken.items())))
        if refused:
            raise Refused(refused)

    def _release(self, p: int) -> None:
        self._on_released(p)
        lock, _ = self._held[p]
        lock.release()
        held = dict(self._held)
        del held[p]
        self._set_held(held)
        log.info("cluster: %s released partition %d", self.node, p)


class Refused(Exception):
    """``on_acquired`` refused these partitions (a newer owner claimed them): tried again soon."""


def cluster_map(client: KazooClient, root: str = "/pumplink", partitions: int = PARTITIONS) -> dict:
    """The cluster as ZooKeeper sees it: members with their addresses, and each partition's
    owner and epoch (None when nobody holds it)."""
    root = root.rstrip("/")
    members: dict[str, str] = {}
    try:
        children = client.get_children(f"{root}/members")
    except NoNodeError:
        children = []
    for child in children:
        try:
            data, _ = client.get(f"{root}/members/{child}")
        except NoNodeError:
            continue
        member = json.loads(data)
        members[member["node"]] = member["address"]
    owners: dict[int, dict | None] = {}
    for p in range(partitions):
        path = f"{root}/partitions/{p}"
        try:
            holder = locks.holder(client.get_children(path))
        except NoNodeError:
            holder = None
        owners[p] = None
        if holder is not None:
            try:
                data, _ = client.get(f"{path}/{holder}")
            except NoNodeError:
                continue
            owners[p] = {"node": data.decode("utf-8"), "epoch": locks.sequence(holder)}
    nodes = {name: {"address": address, "partitions": {}} for name, address in members.items()}
    for p, owner in owners.items():
        if owner is not None:
            nodes.setdefault(owner["node"], {"address": None, "partitions": {}})["partitions"][p] = owner["epoch"]
    return {"members": members, "owners": owners, "nodes": nodes}
