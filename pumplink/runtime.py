"""What every actor is given: the config, the database, the clock, the event bus and topics."""

from __future__ import annotations

import dataclasses
import threading

import peewee

from .clock import Clock
from .config import Config
from .events import EventBus
from .metrics import Metrics


@dataclasses.dataclass(frozen=True)
class Topics:
    prefix: str
    legacy_base: str

    def command(self, device_id: int) -> str:
        return f"{self.prefix}/devices/{device_id}/command"

    def device(self, device_id: int, kind: str) -> str:
        return f"{self.prefix}/devices/{device_id}/{kind}"

    @property
    def legacy_control(self) -> str:
        return f"{self.legacy_base}/control"

    def legacy(self, device_id: int, kind: str) -> str:
        return f"{self.legacy_base}/{device_id}/{kind}"

    def subscriptions(self) -> list[str]:
        return [
            f"{self.prefix}/devices/+/ack",
            f"{self.prefix}/devices/+/state",
            f"{self.prefix}/devices/+/availability",
            f"{self.legacy_base}/+/ack",
            f"{self.legacy_base}/+/status",
        ]

    def parse(self, topic: str) -> tuple[str, int, str] | None:
        """``(protocol, device_id, kind)`` for a device topic, else None."""
        for protocol, base, middle in (("pumplink", self.prefix, "devices/"), ("legacy", self.legacy_base, "")):
            head = f"{base}/{middle}"
            if topic.startswith(head):
                parts = topic[len(head):].split("/")
                if len(parts) == 2 and parts[0].isdigit():
                    return protocol, int(parts[0]), parts[1]
        return None


class BrokerStatus:
    """The MQTT link's state, readable from any thread (``/ready``, activations) without asking an actor."""

    def __init__(self):
        self.connected = threading.Event()
        self.connects = 0
        self.last_error: str | None = None


@dataclasses.dataclass(frozen=True)
class Runtime:
    config: Config
    db: peewee.Database
    clock: Clock
    bus: EventBus
    topics: Topics
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    broker: BrokerStatus = dataclasses.field(default_factory=BrokerStatus)

    @classmethod
    def build(cls, config: Config, db: peewee.Database, clock: Clock | None = None) -> "Runtime":
        return cls(
            config=config, db=db, clock=clock or Clock(), bus=EventBus(),
            topics=Topics(config.mqtt_prefix, config.legacy_base),
        )
