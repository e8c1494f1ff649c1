"""What every actor is given: the config, the database, the clock, the event bus and topics."""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

import peewee

from pumplink.clock import Clock
from pumplink.config import Config
from pumplink.events import EventBus
from pumplink.metrics import Metrics
from pumplink.devices.protocol import parse_topic


@dataclasses.dataclass(frozen=True)
class Topics:
    prefix: str
    legacy_base: str

    def command(self, device_id: int) -> str:
        return f"{self.prefix}/devices/{device_id}/command"

    @property
    def legacy_control(self) -> str:
        return f"{self.legacy_base}/control"

    def subscriptions(self) -> list[str]:
        """Every device topic, by wildcard (the link subscribes them without their retained messages)."""
        return [
            f"{self.prefix}/devices/+/ack",
            f"{self.prefix}/devices/+/state",
            f"{self.prefix}/devices/+/availability",
            f"{self.legacy_base}/+/ack",
            f"{self.legacy_base}/+/status",
        ]

    def device(self, device_id: int) -> list[str]:
        """Cluster mode: one device's topics in both protocols, subscribed instead of the wildcards
        (a PATCH may switch its protocol; the supervisor routes by the current one)."""
        return [
            f"{self.prefix}/devices/{device_id}/ack",
            f"{self.prefix}/devices/{device_id}/state",
            f"{self.prefix}/devices/{device_id}/availability",
            f"{self.legacy_base}/{device_id}/ack",
            f"{self.legacy_base}/{device_id}/status",
        ]

    def retained(self, device_id: int, protocol: str) -> list[str]:
        """The topics a device keeps its retained snapshot on (MQTT.md): fetched per device at connect."""
        if protocol == "legacy":
            return [f"{self.legacy_base}/{device_id}/status"]
        return [f"{self.prefix}/devices/{device_id}/state", f"{self.prefix}/devices/{device_id}/availability"]

    def marker(self, client_id: str) -> str:
        """Where the link publishes to itself (QoS 1) to learn that a batch of retained messages was delivered."""
        return f"{self.prefix}/server/{client_id}/marker"

    def probe(self, client_id: str) -> str:
        """Where the server's MQTT watchdog publishes to itself to prove the link carries messages."""
        return f"{self.prefix}/server/{client_id}/probe"

    def parse(self, topic: str) -> tuple[str, int, str] | None:
        """``(protocol, device_id, kind)`` for a device topic, else None (never raises)."""
        try:
            return parse_topic(self.prefix, self.legacy_base, topic)
        except Exception:  # noqa: BLE001 - "not a device topic" is the answer to anything odd
            return None


class BrokerStatus:
    """The MQTT link's state, readable from any thread (``/ready``, activations) without asking an actor.

    ``connected`` says paho holds a connection; ``health()`` says whether the link really works:
    its network loop is alive and it has carried a message (or the watchdog's own probe) lately.
    """

    def __init__(self):
        self.connected = threading.Event()
        self.connects = 0
        self.last_error: str | None = None
        # Set by the MqttActor: whether paho's network thread runs now (read live, not from a tick).
        self.loop_check: Callable[[], bool] = lambda: False
        self.silent = False  # connected, yet not even the watchdog's own probe came back in time
        self.restarts = 0  # times the watchdog replaced a dead or stuck client
        self.last_restart: str | None = None  # why it last did

    @property
    def loop_alive(self) -> bool:
        try:
            return bool(self.loop_check())
        except Exception:  # noqa: BLE001 - a link we cannot even inspect is not working
            return False

    def health(self) -> str:
        """``ok`` or ``down: <why>``, for ``/ready``."""
        if not self.loop_alive:
            return "down: network loop not running"
        if not self.connected.is_set():
            return f"down: not connected ({self.last_error or 'connecting'})"
        if self.silent:
            return "down: link carries no messages"
        return "ok"


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
