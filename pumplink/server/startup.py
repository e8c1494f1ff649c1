"""Starts the actors in order and stops them in reverse (the Mopidy way)."""

from __future__ import annotations

import logging

import peewee
import pykka

from pumplink.storage import models as m
from pumplink.devices.link import MqttActor
from pumplink.devices.supervisor import Supervisor
from pumplink.clock import Clock
from pumplink.config import Config
from pumplink.gateway import Gateway
from pumplink.runtime import Runtime

log = logging.getLogger(__name__)


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

    @property
    def config(self) -> Config:
        return self.rt.config

    def start(self, broker_wait_s: float = 5.0) -> "ActorSystem":
        for listener in self._listener_factories():
            ref = listener()
            self.listeners.append(ref)
            self.rt.bus.subscribe(ref)
        self.mqtt = MqttActor.start(self.rt, self._route, self._on_broker_connect, self.broker)
        self.supervisor = Supervisor(self.rt, self.mqtt)
        self.supervisor.start_all()  # crash recovery runs here, before any request
        self.mqtt.proxy().connect().get(timeout=10)
        if not self.broker.connected.wait(broker_wait_s):
            log.warning("the broker is not reachable yet; paho keeps trying in the background")
        self.gateway = Gateway(self)
        self.scheduler = self._start_scheduler()
        return self

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop(block=True, timeout=5)
        if self.supervisor is not None:
            self.supervisor.stop_all()
        if self.mqtt is not None:
            self.mqtt.stop(block=True, timeout=5)
        for ref in reversed(self.listeners):
            self.rt.bus.unsubscribe(ref)
            try:
                ref.stop(block=True, timeout=5)
            except pykka.ActorDeadError:
                pass
        log.info("actor system stopped")

    # Hooks the scheduler and the live listeners plug into.
    def _listener_factories(self):
        factories = []
        # --- broadcaster and notifier (issue 5) go here: callables returning started ActorRefs ---
        from pumplink.live.broadcaster import BroadcasterActor
        from pumplink.live.notifier import NotifierActor

        def broadcaster():
            self.broadcaster = BroadcasterActor.start(self.rt)
            return self.broadcaster

        def notifier():
            self.notifier = NotifierActor.start(self.rt)
            return self.notifier

        factories.append(broadcaster)
        if self.rt.config.push_enabled:
            factories.append(notifier)
        return factories

    def _start_scheduler(self) -> pykka.ActorRef | None:
        # --- the scheduler (issue 4) starts here ---
        from pumplink.schedules.scheduler import SchedulerActor

        return SchedulerActor.start(self.rt, self.gateway)

    def _route(self, inbound) -> str:
        if self.supervisor is None:
            return "unknown_device"
        return self.supervisor.route(inbound.device_id, inbound.protocol, inbound.message)

    def _on_broker_connect(self) -> None:
        if self.supervisor is not None:
            self.supervisor.broker_connected()
