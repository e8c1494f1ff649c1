"""Where a device's requests go: this node's actor, the owner's internal address, or nowhere yet.

``Owners`` reads from ZooKeeper who holds each partition's lock and where each member listens,
lazily and cached; a one-shot watch drops a cached answer as soon as ZooKeeper changes it, so a
forwarded call costs no ZooKeeper round trip in the steady state. ``Router`` answers the
gateway: ``is_local(device)`` (this node's Member owns its partition), else the owner's address
to forward to, else a retryable 503 ``partition_moving``.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import KazooState

from pumplink.cluster.locks import holder
from pumplink.cluster.membership import _PARTY_MARK
from pumplink.cluster.partitions import PARTITIONS, partition_of
from pumplink.errors import PumpLinkError, Unavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1


def moving(device_id: int, why: str) -> Unavailable:
    return Unavailable(f"Device {device_id} is changing hands between servers ({why}); try again in a moment.",
                       "partition_moving", retry_after=RETRY_AFTER_S)


class Owners:
    """Each partition's owner (node name) and each member's internal address, as ZooKeeper holds them."""

    def __init__(self, client, root: str = "/pumplink"):
        self.client = client
        self.root = root.rstrip("/")
        self._owners: dict[int, str | None] = {}
        self._members: dict[str, str] | None = None
        self._lock = threading.Lock()
        # A new session has none of the old one's watches: read everything again.
        client.add_listener(lambda state: self.forget() if state == KazooState.LOST else None)

    def owner(self, p: int) -> str | None:
        with self._lock:
            if p in self._owners:
                return self._owners[p]
        path = f"{self.root}/partitions/{p}"
        # Watch first, then read: a change after the read still drops what we cache.
        try:
            children = self.client.get_children(path, watch=lambda _e: self._forget_owner(p))
        except NoNodeError:
            # Nobody ever took it; the lock recipe creates the znode, and watching its creation
            # would cost a znode per partition: ask again next time.
            return None
        lock = holder(children)
        owner = None
        if lock is not None:
            try:
                data, _ = self.client.get(f"{path}/{lock}")
                owner = data.decode("utf-8") or None
            except NoNodeError:
                return None  # it just went; the watch fired or will
        with self._lock:
            self._owners[p] = owner
        return owner

    def members(self) -> dict[str, str]:
        """Node name -> internal address of every member of the party."""
        with self._lock:
            if self._members is not None:
                return self._members
        path = f"{self.root}/members"
        try:
            children = self.client.get_children(path, watch=lambda _e: self._forget_members())
        except NoNodeError:
            return {}
        found: dict[str, str] = {}
        for child in children:
            if _PARTY_MARK not in child:
                continue
            try:
                data, _ = self.client.get(f"{path}/{child}")
            except NoNodeError:
                continue
            member = json.loads(data)
            found[member["node"]] = member["address"]
        with self._lock:
            self._members = found
        return found

    def _forget_owner(self, p: int) -> None:
        with self._lock:
            self._owners.pop(p, None)

    def _forget_members(self) -> None:
        with self._lock:
            self._members = None

    def forget(self) -> None:
        """Everything is read again (after a new session: watches of the old one are gone)."""
        with self._lock:
            self._owners.clear()
            self._members = None


def _nothing() -> None:
    return None


class Router:
    """For the gateway: is a device's partition ours, and if not, where to forward to."""

    def __init__(self, member, owners: Owners, forwarder, partitions: int = PARTITIONS,
                 runs_here: Callable[[int], bool] | None = None):
        self.member = member  # cluster.membership.Member: what this node owns, and its name
        self.owners = owners
        self.forwarder = forwarder  # cluster.forward.Forwarder
        self.partitions = partitions
        # Whether the device layer runs the device here (cluster.node.ClusterNode.owns): it stops
        # before the Member gives the partition back, and starts before the Member counts it.
        self.runs_here = runs_here or (lambda device_id: True)
        self.owner_only = False

    @property
    def node(self) -> str:
        return self.member.node

    def as_owner(self) -> "Router":
        """The router of a call forwarded to us: it never forwards again (no ping-pong while a
        partition moves); a device not ours is a 503 the forwarding node passes on."""
        other = Router(self.member, self.owners, self.forwarder, self.partitions, self.runs_here)
        other.owner_only = True
        return other

    def is_local(self, device_id: int) -> bool:
        """True: this node owns the device's partition (recovered, not being given back). False:
        ask ``address`` (another node's, or a 503 while the partition moves)."""
        if self.member.epoch_for(device_id) is not None and self.runs_here(device_id):
            return True
        if self.owner_only:
            raise moving(device_id, "no longer owned by the server it was sent to")
        return False

    def moved(self, device_id: int) -> Unavailable:
        return moving(device_id, "this server just gave it up")

    def address(self, device_id: int) -> str:
        """The owner's internal address, or a retryable 503 while nobody can answer for the device."""
        p = partition_of(device_id, self.partitions)
        try:
            owner = self.owners.owner(p)
            if owner is None:
                raise moving(device_id, "no server holds it")
            if owner == self.node:
                raise moving(device_id, "this server is taking it over or giving it back")
            address = self.owners.members().get(owner)
        except KazooException as exc:
            log.warning("cluster: owner of partition %d unknown (%s)", p, exc.__class__.__name__)
            raise moving(device_id, "the coordination service is not reachable") from None
        if not address:
            raise moving(device_id, f"its server {owner} is leaving")
        return address

    def others(self) -> dict[str, str]:
        """Every other member's internal address (for calls every node answers for its own devices)."""
        try:
            return {n: a for n, a in self.owners.members().items() if n != self.node}
        except KazooException:
            raise Unavailable("The coordination service is not reachable; try again in a moment.",
                              "cluster_unavailable", retry_after=RETRY_AFTER_S) from None

    def each_node(self, local: Callable[[], list], op: str, user_id: int | None, idle: Callable[[], None] = _nothing,
                  **args) -> list:
        """``local()`` here and ``op`` on every other member, joined. A member that cannot answer
        does not stop the others; the first such error is raised once all were asked. ``idle``
        runs before the calls to other nodes (the gateway gives its database connection back)."""
        results = list(local())
        if self.owner_only:
            return results
        failed: PumpLinkError | None = None
        idle()
        for _, address in sorted(self.others().items()):
            try:
                results.extend(self.forwarder.call(address, op, user_id, **args))
            except PumpLinkError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return results

    def split(self, device_ids: list[int], local: Callable[[list[int]], list], op: str,
              idle: Callable[[], None] = _nothing) -> list:
        """Per-device answers: this node's from ``local``, the others' from their owners (one call
        per owner), in the order of ``device_ids``."""
        mine: list[int] = []
        remote: dict[str, list[int]] = {}
        for device_id in device_ids:
            if self.is_local(device_id):
                mine.append(device_id)
            else:
                remote.setdefault(self.address(device_id), []).append(device_id)
        parts = [(mine, local(mine))]
        if remote:
            idle()
        parts += [(ids, self.forwarder.call(address, op, None, device_ids=ids)) for address, ids in remote.items()]
        by_id = {i: answer for ids, answers in parts for i, answer in zip(ids, answers)}
        return [by_id[i] for i in device_ids if i in by_id]

    def check_covered(self, answered: list[int], device_ids: list[int]) -> None:
        """A 503 to retry when some device had no owner to answer for it (an emergency stop)."""
        missing = sorted(set(device_ids) - set(answered))
        if missing and not self.owner_only:
            raise Unavailable(f"{len(missing)} devices are changing hands between servers and were not reached "
                              f"(first: {missing[0]}); the others were. Try again in a moment.",
                              "partition_moving", retry_after=RETRY_AFTER_S, device_ids=missing[:100])


def router_for(cluster, config, metrics=None) -> Router:
    """The gateway's router for this node (``cluster``: cluster.node.ClusterNode)."""
    from pumplink.cluster.forward import Forwarder

    member = cluster.member
    return Router(member, Owners(member.client, cluster.root), Forwarder(member.node, config.cluster_secret, metrics),
                  runs_here=cluster.owns)
