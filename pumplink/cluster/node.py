"""This node in cluster mode: the Member's hooks wired to the device layer.

- ``on_acquired({p: epoch})``: every partition whose lock the Member just took, as one batch:
  claim their epochs in PostgreSQL (fencing.py; refused ones are given back), start and recover
  their device actors, subscribe their topics (their retained state arrives) and plan their
  schedules. Only then does the Member count them as owned; the device layer counts them from
  the claim on (``owns``), so recovery's writes carry the epoch.
- ``on_released(p)``: at once no ON for its devices, then their actors stop, the scheduler
  forgets them, the link unsubscribes. Pumps keep their own OFF timers meanwhile.
- A write refused by the fence (``fenced``) drops the partition here the same way.
- Devices created on any node start on their owner: when asked (``Supervisor.get``), or found
  by a poll for new device ids every NEW_DEVICES_S.

Nothing here is imported by a single node.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from pumplink.cluster import fencing
from pumplink.cluster.membership import Member, Session
from pumplink.cluster.partitions import PARTITIONS, partition_of
from pumplink.config import Config
from pumplink.devices.messages import Unwatch, Watch
from pumplink.runtime import Runtime
from pumplink.schedules.partitioned import Forget, Plan
from pumplink.storage import models as m

log = logging.getLogger(__name__)

NEW_DEVICES_S = 1.0
DEFAULT_ROOT = "/pumplink"


def split_hosts(zookeeper: str) -> tuple[str, str]:
    """``hosts[/chroot]`` → (hosts, root of our znodes): the chroot is used as the root path, so
    it need not exist beforehand (kazoo's chroot must)."""
    hosts, slash, chroot = zookeeper.partition("/")
    return hosts, f"/{chroot}" if slash else DEFAULT_ROOT


class ClusterNode:
    def __init__(self, config: Config, rt: Runtime):
        self.rt = rt
        self.node = config.node
        hosts, self.root = split_hosts(config.zookeeper)
        rt.metrics.enable_cluster()
        self.member = Member(hosts, self.node, config.internal_address, root=self.root,
                             session_timeout_s=config.zk_session_timeout_s,
                             on_acquired=self._acquired, on_released=self._released)
        self.supervisor = None  # set by the actor system, before start()
        self.mqtt = None
        self.scheduler = None
        self._epochs: dict[int, int] = {}  # partitions whose devices run here (recovering included)
        self._lock = threading.RLock()
        self.handovers = {"acquired": 0, "released": 0, "fenced": 0, "refused": 0}
        self._stop = threading.Event()
        self._max_device = 0
        self.session_timeout_s = config.zk_session_timeout_s
        self._heard = time.monotonic()  # last answer from ZooKeeper (see _heartbeat)
        self._by_partition: tuple[float, dict[int, list[int]]] = (-NEW_DEVICES_S, {})

    # --- read by the device layer and the API ---------------------------------------------
    def owns(self, device_id: int) -> bool:
        return partition_of(device_id) in self._epochs

    is_local = owns

    def fence_for(self, device_id: int) -> fencing.Fence | None:
        p = partition_of(device_id)
        epoch = self._epochs.get(p)
        return (p, epoch) if epoch is not None else None

    def may_send_on(self, device_id: int) -> bool:
        return self.member.session is Session.CONNECTED and self.may_send_off(device_id)

    def may_send_off(self, device_id: int) -> bool:
        """An OFF is safe while the partition may still be ours: not once ZooKeeper has been
        silent for a session timeout (then it surely has a new owner, whose runs an OFF from
        here would cut short), as after this process was frozen and woke up."""
        return partition_of(device_id) in self._epochs and time.monotonic() - self._heard < self.session_timeout_s

    def status(self) -> dict:
        with self._lock:
            owned = dict(sorted(self._epochs.items()))
        return {"node": self.node, "session": self.member.session.value, "partitions": sorted(owned),
                "owned": len(owned), "epochs": {str(p): e for p, e in owned.items()},
                "handovers": dict(self.handovers), "forwarded": self.rt.metrics.forwarded_counts()}

    # --- life ---------------------------------------------------------------------------------
    def start(self) -> "ClusterNode":
        self.member.start()
        self.member.client.add_listener(self._session_changed)  # after the Member's: it reads its state
        self._gauge()
        threading.Thread(target=self._poll_new_devices, name="cluster-new-devices", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="cluster-heartbeat", daemon=True).start()
        return self

    def stop(self) -> None:
        """A planned leave (SIGTERM): every partition is handed over at once; safe twice."""
        self._stop.set()
        if self.member.session is not Session.STOPPED:
            self.member.stop()
        self._gauge()

    # --- the Member's hooks (its worker) -------------------------------------------------------
    def _acquired(self, grants: dict[int, int]) -> set[int]:
        """Partitions whose locks one pass took, recovered as one batch: one claim statement, one
        read of their devices' records (four queries), their actors started together, not one
        partition after another (docs/decisions.md). Returns those refused."""
        began = time.monotonic()
        with self.rt.db.connection_context():
            claimed = fencing.claim_all(self.rt.db, grants, wait_s=self.session_timeout_s)
            ids = {p: self._ids_of(p) for p in sorted(claimed)}
        refused = set(grants) - claimed  # a newer owner exists: the Member gives these locks back
        self.handovers["refused"] += len(refused)
        with self._lock:
            self._epochs.update({p: grants[p] for p in claimed})
        try:
            # Crash recovery, before the partitions count; a partition of no device starts nothing.
            started = self.supervisor.start_devices([i for p in ids for i in ids[p]]) if claimed else []
        except BaseException:
            for p in claimed:
                self._drop(p)
            raise
        self._watch(started)
        if self.scheduler is not None and started:
            self.scheduler.tell(Plan(tuple(started)))
        self.handovers["acquired"] += len(claimed)
        self.rt.metrics.cluster_handovers.labels("acquired").inc(len(claimed))
        self._gauge()
        ready_at, took_ms = time.time(), round((time.monotonic() - began) * 1000, 1)
        devices = collections.Counter(partition_of(i) for i in started)
        for p in sorted(claimed):
            log.info("cluster: partition %d (epoch %d) recovered here: %d devices", p, grants[p], devices[p],
                     extra={"partition": p, "epoch": grants[p], "ready_at": ready_at, "batch": len(claimed),
                            "took_ms": took_ms})
        return refused

    def _ids_of(self, p: int) -> list[int]:
        """The partition's live devices. Every device id is read once for a burst of acquisitions
        (64 at a node's start), not once per partition; a device newer than the read is found
        by the poll."""
        at, by_partition = self._by_partition
        if time.monotonic() - at >= NEW_DEVICES_S:
            by_partition = {}
            for i in _live_ids():
                by_partition.setdefault(partition_of(i), []).append(i)
            self._by_partition = (time.monotonic(), by_partition)
        return by_partition.get(p, [])

    def _released(self, p: int) -> None:
        if self._drop(p):
            self.handovers["released"] += 1
            self.rt.metrics.cluster_handovers.labels("released").inc()

    def fenced(self, p: int) -> None:
        """A write of partition ``p`` was refused: another node owns it now. Off the caller's thread
        (a device actor or the writer): stopping actors from there would wait on itself."""
        if p in self._epochs:
            self.handovers["fenced"] += 1
            self.rt.metrics.cluster_handovers.labels("fenced").inc()
            threading.Thread(target=self._drop, args=(p,), name=f"fenced-{p}", daemon=True).start()

    def _drop(self, p: int) -> bool:
        with self._lock:
            if self._epochs.pop(p, None) is None:
                return False
        released_at = time.time()
        # Not ours from here on (no ON, no fence); then the actors, schedules and topics go.
        ids = [i for i in self.supervisor.ids() if partition_of(i) == p]
        if self.scheduler is not None:
            self.scheduler.tell(Forget(tuple(ids)))
        self.supervisor.stop_devices(ids)
        if self.mqtt is not None and ids:
            self.mqtt.tell(Unwatch(tuple(t for i in ids for t in self.rt.topics.device(i))))
        self._gauge()
        log.info("cluster: partition %d left this node (%d devices)", p, len(ids),
                 extra={"partition": p, "released_at": released_at})
        return True

    def device_started(self, device_id: int) -> None:
        """An actor started alone (a new device, or one restarted): its topics."""
        self._watch([device_id])

    def _watch(self, ids: list[int]) -> None:
        if self.mqtt is not None and ids:
            self.mqtt.tell(Watch(tuple(tuple(self.rt.topics.device(i)) for i in ids)))

    def subscriptions(self) -> list[list[str]]:
        """Per running device, its topics: what the link subscribes at each (re)connect."""
        return [self.rt.topics.device(i) for i in self.supervisor.ids()] if self.supervisor else []

    # --- background -----------------------------------------------------------------------------
    def _poll_new_devices(self) -> None:
        """Devices created through other nodes start here when they are ours (cheap: by primary key)."""
        while not self._stop.wait(NEW_DEVICES_S):
            try:
                with self.rt.db.connection_context():
                    new = [i for i in _live_ids(after=self._max_device)]
                if not new:
                    continue
                self._max_device = max(new)
                cached = self._by_partition[1]
                for i in new:  # a partition taken from the cached read must not miss them
                    if i not in cached.setdefault(partition_of(i), []):
                        cached[partition_of(i)].append(i)
                running = set(self.supervisor.ids())
                for i in new:
                    if self.owns(i) and i not in running:
                        self.supervisor.start_device(i)
            except Exception:  # noqa: BLE001 - tried again at the next tick
                log.warning("cluster: looking for new devices failed", exc_info=True)

    def _heartbeat(self) -> None:
        """A cheap read of ZooKeeper every quarter of the session timeout: while answers come,
        the session is alive; a process frozen (SIGSTOP, a long GC, a paused VM) wakes with an
        old ``_heard`` and sends nothing until ZooKeeper answers again."""
        while not self._stop.wait(max(0.1, self.session_timeout_s / 4)):
            try:
                self.member.client.exists(self.root)
                self._heard = time.monotonic()
            except Exception:  # noqa: BLE001 - no answer: _heard stays old
                log.debug("cluster: heartbeat got no answer", exc_info=True)

    def _session_changed(self, state) -> bool:
        self._gauge()
        return False

    def _gauge(self) -> None:
        metrics = self.rt.metrics
        metrics.cluster_partitions.set(len(self._epochs))
        now = self.member.session.value
        for s in Session:
            metrics.cluster_session.labels(s.value).set(1 if s.value == now else 0)


def _live_ids(after: int = 0) -> list[int]:
    return [i for (i,) in m.Device.select(m.Device.id)
            .where(m.Device.deleted_at.is_null() & (m.Device.id > after)).order_by(m.Device.id).tuples()]


__all__ = ["ClusterNode", "split_hosts", "PARTITIONS"]
