"""Supervisor: starts a DeviceActor per device, restarts one that died, stops them all.

Starting an actor runs its crash recovery (``Machine.recover``, on_start), so when ``start_all``
returns every device has been reconciled with the clock and the requests may come in.

Cluster mode (``cluster``, a cluster.node.ClusterNode): only the devices of partitions this node
owns have actors; the node starts them partition by partition (``start_devices``) and stops them
(``stop_devices``) as partitions come and go.
"""

from __future__ import annotations

import logging
import threading
import time

import pykka
from pykka.messages import ProxyCall

from pumplink.storage import models as m
from pumplink.errors import NotFound
from pumplink.runtime import Runtime
from pumplink.devices.actor import DeviceActor, DeviceRecords
from pumplink.devices.doorbell import Doorbell
from pumplink.devices.messages import BrokerConnected, Ring
from pumplink.devices.writer import GroupWriter

log = logging.getLogger(__name__)

RECHECK_S = 10.0  # a device's protocol is re-read on a mismatch at most this often
RING = Ring()


class Supervisor:
    def __init__(self, rt: Runtime, mqtt: pykka.ActorRef, cluster=None):
        self.rt = rt
        self.mqtt = mqtt
        self.cluster = cluster
        self._refs: dict[int, pykka.ActorRef] = {}
        # Each actor's doorbell: what the MQTT link has for it, told once per burst (doorbell.py).
        self._bells: dict[int, Doorbell] = {}
        # Each device's protocol: its messages are read only from its own protocol's topics.
        self._protocols: dict[int, str] = {}
        self._rechecked: dict[int, float] = {}
        self._lock = threading.RLock()
        self.writer = GroupWriter(rt.db, rt.metrics).start()  # the devices' group commits
        if cluster is not None:
            self.writer.on_fenced = cluster.fenced

    def start_all(self) -> None:
        self.start_devices(None)

    def start_devices(self, ids: list[int] | None) -> list[int]:
        """Start (and recover) every live device, or those of ``ids``; returns when all have
        recovered, with the ids started."""
        # Read once for all devices: 10,000 actors each querying at start exhausted the pool.
        with self.rt.db.connection_context():
            records = DeviceRecords.load_all(self.rt.clock.now(), ids)
        for r in records:
            self.start_device(r.device.id, r)
        # An ask is answered only after on_start: when these return, every device has recovered.
        # ``summary`` touches no database and goes past on_receive (pykka calls it directly), so
        # waiting costs no transaction; ProxyCall spares building 10,000 proxies.
        ready = ProxyCall(attr_path=(DeviceActor.summary.__name__,), args=(), kwargs={})
        for future in [self._refs[r.device.id].ask(ready, block=False) for r in records]:
            future.get(timeout=60)
        log.info("%d device actors started", len(records))
        return [r.device.id for r in records]

    def start_device(self, device_id: int, records: DeviceRecords | None = None) -> pykka.ActorRef | None:
        """The device's actor, started if need be; None in cluster mode when another node owns it."""
        with self._lock:
            ref = self._refs.get(device_id)
            if ref is not None and ref.is_alive():
                return ref
            if self.cluster is not None and not self.cluster.owns(device_id):
                return None
            if records is not None:
                self._protocols[device_id] = records.device.protocol
            else:
                self._protocols[device_id] = self._load_protocol(device_id)
            bell = Doorbell()  # a new actor: what waited for a dead one is gone with it, as its mailbox
            ref = DeviceActor.start(device_id, self.rt, self.mqtt, self.writer, records, self.cluster, bell)
            self._bells[device_id] = bell
            self._refs[device_id] = ref
        if self.cluster is not None and records is None:
            self.cluster.device_started(device_id)  # one started alone (new, or restarted): its topics
        return ref

    def _load_protocol(self, device_id: int) -> str:
        # On the caller's thread (a request may hold a connection, even a transaction): close
        # only a connection opened here.
        db = self.rt.db
        opened_here = db.is_closed()
        try:
            device = m.Device.get_or_none(m.Device.id == device_id)
        finally:
            if opened_here and not db.is_closed() and not db.in_transaction():
                db.close()
        return device.protocol if device is not None else "pumplink"

    def set_protocol(self, device_id: int, protocol: str) -> None:
        """A device's protocol was changed (PATCH): route its messages by the new one from now on."""
        with self._lock:
            if device_id in self._refs:
                self._protocols[device_id] = protocol

    def _recheck_protocol(self, device_id: int) -> None:
        """A PATCH may have changed the protocol behind our back: read it again, off paho's thread,
        at most once per RECHECK_S per device (a flood of forgeries costs one query per device)."""
        now = time.monotonic()
        if now - self._rechecked.get(device_id, -RECHECK_S) < RECHECK_S:
            return
        self._rechecked[device_id] = now
        threading.Thread(target=self._reload_protocol, args=(device_id,), daemon=True,
                         name=f"protocol-{device_id}").start()

    def _reload_protocol(self, device_id: int) -> None:
        try:
            with self.rt.db.connection_context():
                device = m.Device.get_or_none(m.Device.id == device_id)
        except Exception as exc:  # noqa: BLE001 - the next mismatch asks again
            log.warning("could not re-read device %s's protocol: %s", device_id, exc)
            return
        with self._lock:
            if device is not None and device_id in self._refs and self._protocols.get(device_id) != device.protocol:
                log.info("device %s now speaks %s", device_id, device.protocol)
                self._protocols[device_id] = device.protocol

    def protocol(self, device_id: int) -> str | None:
        return self._protocols.get(device_id)

    def get(self, device_id: int) -> pykka.ActorRef:
        """The device's actor; one that died is started again from the database's truth."""
        with self._lock:
            ref = self._refs.get(device_id)
            if ref is None and self.cluster is not None and self.cluster.owns(device_id) and _live(device_id):
                ref = self.start_device(device_id)  # created on another node: it starts here, its owner
            if ref is None:
                raise NotFound(f"There is no device {device_id}.", "device_not_found")
            if not ref.is_alive():
                log.warning("device %s actor was dead; restarting it", device_id)
                ref = self.start_device(device_id)
            return ref

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._refs)

    def route(self, device_id: int, protocol: str, message) -> str:
        """Called from paho's thread: tell only. ``ok``, or why the message was not delivered.

        A message counts only on its device's own protocol's topics: a legacy ack carries no
        command id, so any payload on ``device/5/ack`` would otherwise confirm whatever command
        pumplink device 5 awaits, though that pump never answered.
        """
        ref = self._refs.get(device_id)
        if ref is None:
            return "not_owned" if self.cluster is not None and not self.cluster.owns(device_id) else "unknown_device"
        if self._protocols.get(device_id) != protocol:
            self._recheck_protocol(device_id)
            return "wrong_protocol"
        return self._deliver(ref, self._bells.get(device_id), message)

    @staticmethod
    def _deliver(ref: pykka.ActorRef, bell: Doorbell | None, message) -> str:
        """Into the device's doorbell, in arrival order; the actor is told only when no Ring is pending."""
        if bell is None or not ref.is_alive():  # a dead actor's doorbell would fill for nothing
            return "unknown_device"
        if bell.put(message):
            try:
                ref.tell(RING)
            except pykka.ActorDeadError:
                return "unknown_device"
        return "ok"

    def broker_connected(self) -> None:
        # Through the doorbells: the retained reports that follow come after it, as they arrive.
        for i, ref in list(self._refs.items()):  # paho's thread: no lock taken
            bell = self._bells.get(i)
            self._deliver(ref, bell, BrokerConnected())

    def stop_device(self, device_id: int) -> None:
        with self._lock:
            ref = self._refs.pop(device_id, None)
            self._bells.pop(device_id, None)
            self._protocols.pop(device_id, None)
        if ref is not None:
            ref.stop(block=True, timeout=10)

    def stop_devices(self, ids: list[int]) -> None:
        """Cluster mode: a partition went elsewhere; its actors stop (their pumps keep their own
        OFF timers, and the new owner's recovery takes over)."""
        with self._lock:
            refs = [self._refs.pop(i) for i in ids if i in self._refs]
            for i in ids:
                self._protocols.pop(i, None)
                self._bells.pop(i, None)
        _stop_refs(refs)

    def stop_all(self) -> None:
        with self._lock:
            refs, self._refs = list(self._refs.values()), {}
            self._bells = {}
        _stop_refs(refs)
        self.writer.stop()


def _live(device_id: int) -> bool:
    return m.Device.select().where((m.Device.id == device_id) & m.Device.deleted_at.is_null()).exists()


def _stop_refs(refs: list[pykka.ActorRef]) -> None:
    futures = []
    for ref in refs:
        try:
            futures.append(ref.stop(block=False))
        except pykka.ActorDeadError:
            pass
    for future in futures:
        try:
            future.get(timeout=5)
        except (pykka.Timeout, pykka.ActorDeadError):
            log.warning("a device actor did not stop within 5 s")
