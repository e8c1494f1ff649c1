"""Live events between nodes: each node publishes its own on ``<prefix>/_cluster/events`` and
hears everyone else's, so a WebSocket client on any node sees what happened on any node.

The broker is the channel every node already has; this is a paho client of its own (the device
link's client is the device layer's, and its restarts and subscriptions follow the devices).
QoS 1, not retained, a clean session: a node that was away builds its clients' view from a
fresh snapshot, not from old events. With MQTT 5 the subscription is "no local", so the broker
does not echo a node's own events back; the sender's instance id in every message drops them
anyway (MQTT 3.1.1 has no such option).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import ssl
import uuid
from typing import Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from pumplink.config import Config
from pumplink.events import ActivationChanged, DeviceStateChanged, ScheduleChanged, SitesChanged, UserAccessChanged

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000

TYPES = {cls.__name__: cls for cls in (DeviceStateChanged, ActivationChanged, ScheduleChanged, UserAccessChanged,
                                      SitesChanged)}


def topic(prefix: str) -> str:
    return f"{prefix}/_cluster/events"


def encode(event, sender: str) -> bytes:
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    fields["at"] = event.at.isoformat()
    return json.dumps({"from": sender, "type": type(event).__name__, "event": fields},
                      separators=(",", ":"), default=str).encode()


def decode(payload: bytes):
    """``(sender, event)``; ``None`` for anything that is not one of our events (never raises)."""
    try:
        body = json.loads(payload)
        cls = TYPES[body["type"]]
        fields = dict(body["event"])
        fields["at"] = dt.datetime.fromisoformat(fields["at"])
        return str(body["from"]), cls(**fields)
    except Exception:  # noqa: BLE001 - a stray message on the topic is dropped, not fatal
        return None


class ClusterEvents:
    """Publishes this node's events; hands every other node's to ``deliver`` (from paho's thread)."""

    def __init__(self, config: Config, deliver: Callable[[object], None], metrics=None):
        self.config = config
        self.deliver = deliver
        self.metrics = metrics
        self.sender = f"{config.node}/{uuid.uuid4().hex[:8]}"  # a restarted node is another sender
        self.topic = topic(config.mqtt_prefix)
        self.v5 = config.mqtt_protocol == "5"
        url = urlsplit(config.mqtt_url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pumplink-events-{self.sender}",
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        if url.username:
            self.client.username_pw_set(unquote(url.username), unquote(url.password) if url.password else None)
        if url.scheme == "mqtts":
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        # While the broker is away paho keeps what we publish; past this, new events are dropped.
        self.client.max_queued_messages_set(MAX_QUEUED)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> "ClusterEvents":
        url = urlsplit(self.config.mqtt_url)
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        if self.v5:
            self.client.connect_async(url.hostname, port, keepalive=30, clean_start=True)
        else:
            self.client.connect_async(url.hostname, port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, event) -> None:
        """Queued by paho; while the broker is away, paho keeps QoS 1 messages until it is back."""
        if type(event).__name__ in TYPES:
            self.client.publish(self.topic, encode(event, self.sender), qos=1)
            if self.metrics is not None:
                self.metrics.cluster_events.labels("sent").inc()

    # --- paho's thread: never raise ----------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("cluster events: the broker refused the connection: %s", reason_code)
            return
        if self.v5:
            client.subscribe(self.topic, options=SubscribeOptions(qos=1, noLocal=True))
        else:
            client.subscribe(self.topic, qos=1)
        log.info("cluster events: connected as %s", self.sender)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        log.warning("cluster events: disconnected (%s); events of other nodes are missed until back", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            decoded = decode(msg.payload)
            if decoded is None:
                log.warning("cluster events: dropped a message that is not an event")
                return
            sender, event = decoded
            if sender == self.sender:
                return  # our own, echoed by a broker without "no local"
            if self.metrics is not None:
                self.metrics.cluster_events.labels("received").inc()
            self.deliver(event)
        except Exception:  # noqa: BLE001 - an exception here would end paho's thread
            log.exception("cluster events: delivering a message failed")
