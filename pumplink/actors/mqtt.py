"""MqttActor: the only owner of the paho client.

paho's callbacks run on its network-loop thread (a greenlet under gevent); they only parse
and ``tell`` device actors, never ``ask``, so the loop is never stalled.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import uuid
from typing import Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import pykka

from ..runtime import BrokerStatus, Runtime
from .messages import Ack, Availability, Publish, StateReport

log = logging.getLogger(__name__)


def parse_device_message(protocol: str, kind: str, payload: bytes, retained: bool):
    """Turn a device's MQTT message into an actor message; ValueError when malformed."""
    text = payload.decode("utf-8").strip()
    if protocol == "legacy":
        if kind == "ack":
            return Ack(command_id=None, ok=True, state=None)
        if kind == "status" and text.lower() in ("on", "off"):
            return StateReport(state=text.lower(), reason="status", remaining_s=None, retained=retained)
        raise ValueError(f"legacy {kind} payload {text!r} is not on/off")
    if kind == "availability":
        if text not in ("online", "offline"):
            raise ValueError(f"availability must be online or offline, got {text!r}")
        return Availability(online=text == "online", retained=retained)
    body = json.loads(text)
    if not isinstance(body, dict):
        raise ValueError("payload is not a JSON object")
    if kind == "ack":
        command_id, ok = body.get("id"), body.get("ok")
        state = body.get("state")
        if not isinstance(command_id, str) or not isinstance(ok, bool):
            raise ValueError("ack needs a string id and a boolean ok")
        if state is not None and state not in ("on", "off"):
            raise ValueError(f"ack state must be on or off, got {state!r}")
        error = body.get("error")
        return Ack(command_id=command_id, ok=ok, state=state, error=str(error) if error is not None else None)
    if kind == "state":
        state, reason, remaining = body.get("state"), body.get("reason", "command"), body.get("remaining_s")
        if state not in ("on", "off"):
            raise ValueError(f"state must be on or off, got {state!r}")
        if not isinstance(reason, str) or not reason:
            raise ValueError("reason must be a string")
        if remaining is not None and (isinstance(remaining, bool) or not isinstance(remaining, (int, float))):
            raise ValueError("remaining_s must be a number")
        return StateReport(state=state, reason=reason[:32], remaining_s=remaining, retained=retained)
    raise ValueError(f"unexpected topic kind {kind!r}")


def _no_delay(client: mqtt.Client) -> None:
    """Commands are tiny: without TCP_NODELAY each waits ~20 ms for the broker's delayed ACK."""
    sock = client.socket()
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # TLS wrappers and odd platforms: latency only
            pass


class MqttActor(pykka.ThreadingActor):
    def __init__(self, rt: Runtime, route: Callable[[int, object], bool], on_connect: Callable[[], None],
                 status: BrokerStatus):
        super().__init__()
        self.rt = rt
        self.route = route
        self.notify_connected = on_connect
        self.status = status
        self.client: mqtt.Client | None = None

    def on_start(self) -> None:
        url = urlsplit(self.rt.config.mqtt_url)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"pumplink-server-{uuid.uuid4().hex[:12]}",
            clean_session=True,
        )
        if url.username:
            client.username_pw_set(unquote(url.username), unquote(url.password) if url.password else None)
        if url.scheme == "mqtts":
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def connect(self) -> None:
        """Called once the device actors exist, so retained state has somewhere to go."""
        url = urlsplit(self.rt.config.mqtt_url)
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.client.connect_async(url.hostname, port, keepalive=30)
        self.client.loop_start()

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def on_receive(self, message):
        if isinstance(message, Publish):
            self.publish(message.topic, message.payload, message.qos)

    def publish(self, topic: str, payload: str, qos: int = 1) -> bool:
        # Commands are never retained; a command for a disconnected link is dropped (its ack
        # timeout then decides) rather than delivered late.
        if not self.status.connected.is_set():
            log.warning("broker not connected; command to %s dropped", topic)
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
            return False
        return True

    # --- paho callbacks (network-loop thread): parse and tell, nothing else ----------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self.status.last_error = str(reason_code)
            log.error("broker refused the connection: %s", reason_code)
            return
        _no_delay(client)
        # Subscribing again makes the broker send every retained state and availability anew.
        client.subscribe([(topic, 1) for topic in self.rt.topics.subscriptions()])
        self.status.connects += 1
        self.status.last_error = None
        self.status.connected.set()
        self.rt.metrics.broker_connected.set(1)
        log.info("connected to the broker (connection %d)", self.status.connects)
        self.notify_connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self.status.connected.clear()
        self.rt.metrics.broker_connected.set(0)
        self.status.last_error = str(reason_code)
        log.warning("disconnected from the broker (%s); paho reconnects with backoff", reason_code)

    def _on_message(self, client, userdata, msg):
        parsed = self.rt.topics.parse(msg.topic)
        if parsed is None:
            log.warning("message on unexpected topic %s dropped", msg.topic)
            return
        protocol, device_id, kind = parsed
        try:
            message = parse_device_message(protocol, kind, msg.payload, bool(msg.retain))
        except (ValueError, UnicodeDecodeError) as exc:
            self.rt.metrics.mqtt_malformed.inc()
            log.warning("malformed payload on %s dropped: %s (%r)", msg.topic, exc, msg.payload[:200])
            return
        self.rt.metrics.mqtt_messages.labels(kind).inc()
        if not self.route(device_id, message):
            log.debug("message for unknown device %s on %s dropped", device_id, msg.topic)
