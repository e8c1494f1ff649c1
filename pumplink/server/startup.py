"""ActorSystem: starts the actors in dependency order and stops them in reverse (the Mopidy way).

Order: the bus listeners (broadcaster, notifier), the MQTT link, the device actors (their crash
recovery runs here, before any request), the broker connection, the gateway, the scheduler.
If a step fails, what was already started is stopped again, newest first, and the error is
raised: a half-started system never lingers with pumps under its control.

Cluster mode (``PUMPLINK_ZOOKEEPER``): no device actor starts with the system; the cluster node
(cluster/node.py) joins last and starts each partition's devices as it takes the partition.
"""

from __future__ import annotations

import logging

import peewee
import pykka

from pumplink.storage import models as m
from pumplink.devices.link import MqttActor
from pumplink.devices.supervisor import Supervisor
from pumplink.clock import Clock
from pumplink.config import Config
from pumplink.events import Alert
from pumplink.gateway import Gateway
from pumplink.live.broadcaster import BroadcasterActor
from pumplink.live.notifier import NotifierActor
from pumplink.runtime import Runtime
from pumplink.schedules.scheduler import SchedulerActor

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5


class ActorSystem:
    def __init__(self, config: Config, db: peewee.Database, clock: Clock | None = None):
        m.bind_models(db)
        self.rt = Runtime.build(config, db, clock)
        self.broker = self.rt.broker
        self.mqtt: pykka.ActorRef | None = None
        self.supervisor: Supervisor | None = None
        self.listeners: list[pykka.ActorRef] = []
        self.scheduler: pykka.ActorRef | None = None
        self.gateway: Gateway | None = None
        self.broadcaster: pykka.ActorRef | None = None  # the WebSocket endpoint registers clients here
        self.notifier: pykka.ActorRef | None = None
        self.cluster = None  # cluster/node.py's ClusterNode in cluster mode

    @property
    def config(self) -> Config:
        return self.rt.config

    def start(self, broker_wait_s: float = 5.0) -> "ActorSystem":
        try:
            self._start(broker_wait_s)
        except BaseException:
            log.error("the actor system failed to start; stopping what was started")
            self.stop()
            raise
        return self

    def _start(self, broker_wait_s: float) -> None:
        rt = self.rt
        self.broadcaster = self._listen(BroadcasterActor.start(rt), *BroadcasterActor.EVENTS)
        if rt.config.push_enabled:
            self.notifier = self._listen(NotifierActor.start(rt), Alert)
        if rt.config.clustered:
            from pumplink.cluster.node import ClusterNode  # late: a single node never imports kazoo

            self.cluster = ClusterNode(rt.config, rt)
        self.mqtt = MqttActor.start(rt, self._route, self._on_broker_connect, self.broker,
                                    retained_topics=self._retained_topics, per_device=self.cluster is not None)
        self.supervisor = Supervisor(rt, self.mqtt, self.cluster)
        if self.cluster is None:
            self.supervisor.start_all()  # crash recovery runs here, before any request
        self.mqtt.proxy().connect().get(timeout=10)
        if not self.broker.connected.wait(broker_wait_s):
            log.warning("the broker is not reachable yet; paho keeps trying in the background")
        self.gateway = Gateway(supervisor=self.supervisor, db=rt.db, clock=rt.clock, bus=rt.bus, config=rt.config,
                               topics=rt.topics)
        self.scheduler = SchedulerActor.start(rt, self.gateway, self.cluster)
        self.gateway.scheduler = self.scheduler
        if self.cluster is not None:
            self.cluster.supervisor, self.cluster.mqtt, self.cluster.scheduler = self.supervisor, self.mqtt, self.scheduler
            self.cluster.start()  # takes partitions; each one's devices recover before it counts as owned

    def _listen(self, ref: pykka.ActorRef, *event_types: type) -> pykka.ActorRef:
        self.listeners.append(ref)
        self.rt.bus.subscribe(ref, *event_types)
        return ref

    def stop(self) -> None:
        """Stop in reverse order of starting; safe after a partial start and when called twice."""
        self.leave_cluster()
        if self.gateway is not None:
            self.gateway.scheduler = None
        if self.scheduler is not None:
            _stop(self.scheduler, "scheduler")
            self.scheduler = None
        if self.supervisor is not None:
            self.supervisor.stop_all()
        if self.mqtt is not None:
            _stop(self.mqtt, "MQTT link")
            self.mqtt = None
        for ref in reversed(self.listeners):
            self.rt.bus.unsubscribe(ref)
            _stop(ref, "listener")
        self.listeners.clear()
        log.info("actor system stopped")

    def leave_cluster(self) -> None:
        """Cluster mode: hand every partition over now (SIGTERM), not at the session's expiry."""
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except Exception:  # noqa: BLE001 - the session expires anyway; stopping goes on
                log.exception("leaving the cluster failed; partitions move when the session expires")

    def _route(self, inbound) -> str:
        if self.supervisor is None:
            return "unknown_device"
        return self.supervisor.route(inbound.device_id, inbound.protocol, inbound.message)

    def _retained_topics(self) -> list[list[str]]:
        if self.supervisor is None:
            return []
        if self.cluster is not None:
            return self.cluster.subscriptions()
        return [self.rt.topics.retained(d, self.supervisor.protocol(d) or "pumplink") for d in self.supervisor.ids()]

    def _on_broker_connect(self) -> None:
        if self.supervisor is not None:
            self.supervisor.broker_connected()


def _stop(ref: pykka.ActorRef, what: str) -> None:
    try:
        ref.stop(block=True, timeout=STOP_TIMEOUT_S)
    except pykka.ActorDeadError:
        pass
    except pykka.Timeout:
        log.warning("the %s did not stop within %s s", what, STOP_TIMEOUT_S)
