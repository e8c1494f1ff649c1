"""MqttActor: the only owner of the paho client.

paho's callbacks run on its network-loop thread (a greenlet under gevent); they only parse
and ``tell`` device actors, never ``ask``, so the loop is never stalled. None of them can
raise: an exception escaping a callback ends paho's thread for good (paho re-raises unless
``suppress_exceptions``), and the server would never hear a pump again. A watchdog (a timer
message to this actor) judges the link by whether it works, and replaces a client whose loop
died, that cannot reconnect, or that carries no message (not even its own probe).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import time
import uuid
from typing import Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import pykka
from paho.mqtt.subscribeoptions import SubscribeOptions

from pumplink.devices.protocol import Drop, Inbound, parse_inbound
from pumplink.devices.retained import MARKER_WAIT_S, RetainedFetch
from pumplink.runtime import BrokerStatus, Runtime
from pumplink.devices.messages import Publish, Unwatch, Watch
from pumplink.timers import tell_later

log = logging.getLogger(__name__)

WATCHDOG_S = 1.0  # how often the link is checked
PROBE_S = 5.0  # with nothing received for this long, the server publishes a probe to itself
SILENCE_S = 15.0  # connected, yet nothing (not even the probe) received for this long: replace the client
STUCK_S = 60.0  # not connected for this long although paho retries every <= 30 s: replace the client
DROP_LOG_S = 10.0  # per drop reason, one warning per this many seconds (a flood must not flood the log)


class _Watch:
    """Timer message: time to check the link."""


@dataclasses.dataclass(frozen=True)
class _Fetch:
    """Connected: fetch every device's retained snapshot, a batch at a time (retained.py)."""

    client: object


@dataclasses.dataclass(frozen=True)
class _Marker:
    """The marker of batch ``seq`` came back (or, ``late``, did not in time)."""

    client: object
    seq: int
    late: object = None  # the fetch whose marker is overdue (a timer of an older fetch is stale)


class _DropLog:
    """Logs the first drop of each reason, then a count per interval: a hostile flood stays cheap."""

    def __init__(self):
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, reason: str, topic: str, detail: str, payload: bytes) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -DROP_LOG_S) < DROP_LOG_S:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            log.debug("MQTT message on %.120r dropped (%s): %s", topic, reason, detail)
            return
        more = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        log.warning("MQTT message on %.120r dropped (%s): %s; payload %r%s", topic, reason, detail, payload[:80],
                    f" ({more} more dropped for this reason since the last warning)" if more else "")


def _no_delay(client: mqtt.Client) -> None:
    """Commands are tiny: without TCP_NODELAY each waits ~20 ms for the broker's delayed ACK."""
    sock = client.socket()
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # TLS wrappers and odd platforms: latency only
            pass


def _loop_alive(client: mqtt.Client | None) -> bool:
    # paho has no public accessor for the thread loop_start() made; its _thread_main sets
    # _thread to None when loop_forever ends, by return or by an exception.
    thread = getattr(client, "_thread", None)
    return thread is not None and thread.is_alive()


class MqttActor(pykka.ThreadingActor):
    def __init__(self, rt: Runtime, route: Callable[[Inbound], str], on_connect: Callable[[], None],
                 status: BrokerStatus, *, retained_topics: Callable[[], list[list[str]]] = list,
                 per_device: bool = False, watchdog_s: float = WATCHDOG_S, probe_s: float = PROBE_S, silence_s: float = SILENCE_S,
                 stuck_s: float = STUCK_S):
        super().__init__()
        self.rt = rt
        self.route = route  # Inbound -> "ok" | a drop reason ("unknown_device", "wrong_protocol")
        self.notify_connected = on_connect
        self.retained_topics = retained_topics  # per device, the topics of its retained snapshot
        # Cluster mode: no wildcards; each owned device's topics, subscribed for good (Watch/Unwatch).
        self.per_device = per_device
        self._fetch: RetainedFetch | None = None
        self.status = status
        self.watchdog_s, self.probe_s, self.silence_s, self.stuck_s = watchdog_s, probe_s, silence_s, stuck_s
        self.client: mqtt.Client | None = None
        self._base_id = f"pumplink-server-{uuid.uuid4().hex[:12]}"
        self._clients = 0
        self._probe_topic = self._marker_topic = ""
        self._started = False  # connect() was called: a loop is expected to run
        self._stopping = False
        self._timer = None
        now = time.monotonic()
        self._last_inbound = self._connected_at = self._down_since = now
        self._log_drop = _DropLog()
        status.loop_check = lambda: self._started and not self._stopping and _loop_alive(self.client)

    def on_start(self) -> None:
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        url = urlsplit(self.rt.config.mqtt_url)
        self._clients += 1
        # A fresh id per client: a replaced client that wakes up later cannot take over the new
        # one's session (same-id clients kick each other off the broker).
        client_id = self._base_id if self._clients == 1 else f"{self._base_id}-{self._clients}"
        # MQTT 5 for its subscription option "no retained messages" (see retained.py).
        protocol = mqtt.MQTTv5 if self.rt.config.mqtt_protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if url.username:
            client.username_pw_set(unquote(url.username), unquote(url.password) if url.password else None)
        if url.scheme == "mqtts":
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._probe_topic = self.rt.topics.probe(client_id)
        self._marker_topic = self.rt.topics.marker(client_id)
        return client

    def connect(self) -> None:
        """Called once the device actors exist, so retained state has somewhere to go."""
        self._started = True
        self._start_loop()
        self._arm()

    def _start_loop(self) -> None:
        url = urlsplit(self.rt.config.mqtt_url)
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self._down_since = time.monotonic()
        # A clean session at every (re)connect: no command queued while away is delivered late.
        self.client.connect_async(url.hostname, port, keepalive=30, clean_start=True)
        self.client.loop_start()

    def on_stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def on_receive(self, message):
        # An exception escaping a told message would stop this actor, and with it every command.
        try:
            if isinstance(message, Publish):
                self.publish(message.topic, message.payload, message.qos)
            elif isinstance(message, _Watch):
                self._watch()
            elif isinstance(message, Watch):
                self._watch_devices([list(t) for t in message.topics])
            elif isinstance(message, Unwatch):
                if self.status.connected.is_set() and message.topics:
                    self.client.unsubscribe(list(message.topics))
            elif isinstance(message, _Fetch):
                if message.client is self.client:
                    self._fetch_start()
            elif isinstance(message, _Marker):
                if message.client is self.client and (message.late is None or message.late is self._fetch):
                    self._fetch_next(message.seq, message.late is not None)
        except Exception:  # noqa: BLE001
            log.exception("the MQTT actor failed handling %r", type(message).__name__)

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

    # --- the retained snapshots, a batch at a time (this actor's thread) ------------------------
    def _watch_devices(self, topics: list[list[str]]) -> None:
        if not self.status.connected.is_set() or not topics:
            return  # the next connect subscribes every owned device's topics anyway
        if self._fetch is not None:
            self._fetch.extend(topics)
            return
        self._fetch = RetainedFetch(topics)
        self._fetch_next(-1, False)

    def _fetch_start(self) -> None:
        self._fetch = RetainedFetch(self.retained_topics())
        self.rt.metrics.retained_fetch_pending.set(self._fetch.devices)
        self._fetch_next(-1, False)

    def _fetch_next(self, seq: int, late: bool) -> None:
        fetch = self._fetch
        if fetch is None or seq != fetch.seq or not self.status.connected.is_set():
            return  # a stale marker, or a link that went down (its next connect fetches anew)
        if late:
            fetch.timeouts += 1
            log.warning("retained batch %d not delivered within %.0fs; going on", seq, MARKER_WAIT_S)
        done = fetch.current
        if done and not self.per_device:
            # The per-device filters were only for the retained messages; the wildcards carry the rest.
            self.client.unsubscribe(done)
        topics = fetch.advance()
        self.rt.metrics.retained_fetch_pending.set(fetch.pending_devices)
        if topics is None:
            self._fetch = None
            self.rt.metrics.retained_fetch_seconds.set(fetch.elapsed())
            log.info("retained state of %d devices fetched in %.2fs (%d batches)", fetch.devices, fetch.elapsed(),
                     len(fetch.batches))
            return
        self.client.subscribe([(topic, 1) for topic in topics])
        self.client.publish(self._marker_topic, str(fetch.seq), qos=1, retain=False)
        tell_later(self.actor_ref, MARKER_WAIT_S, _Marker(self.client, fetch.seq, late=fetch))

    # --- the watchdog (this actor's thread) ---------------------------------------------------
    def _arm(self) -> None:
        if not self._stopping:
            self._timer = tell_later(self.actor_ref, self.watchdog_s, _Watch())

    def _watch(self) -> None:
        try:
            self._check()
        except Exception:  # noqa: BLE001 - the watchdog must outlive whatever it finds
            log.exception("the MQTT watchdog failed; it checks again in %.1fs", self.watchdog_s)
        finally:
            self._arm()

    def _check(self) -> None:
        if self._stopping or not self._started:
            return
        now = time.monotonic()
        if not _loop_alive(self.client):
            self._restart("loop_dead", "paho's network loop is not running")
        elif not self.status.connected.is_set():
            if now - self._down_since > self.stuck_s:
                self._restart("stuck_disconnected", f"no connection for {now - self._down_since:.0f}s")
        else:
            quiet = now - max(self._last_inbound, self._connected_at)
            if quiet > self.silence_s:
                self.status.silent = True
                self._restart("silent", f"nothing received for {quiet:.0f}s, not even its own probe")
                return
            # A probe normally comes back within milliseconds: one unanswered for two ticks
            # already makes /ready say so, before the client is replaced.
            self.status.silent = quiet > self.probe_s + 2 * self.watchdog_s
            if quiet >= self.probe_s:
                # QoS 0 to itself: if the loop reads, it comes back at once.
                self.client.publish(self._probe_topic, b"", qos=0, retain=False)

    def _restart(self, reason: str, why: str) -> None:
        self.status.restarts += 1
        self.status.last_restart = reason
        self.rt.metrics.mqtt_restarts.labels(reason).inc()
        log.error("MQTT link not working: %s; replacing the client (restart %d)", why, self.status.restarts)
        self._link_down(why)
        old, self.client = self.client, self._new_client()
        self._retire(old)
        self._start_loop()

    @staticmethod
    def _retire(client: mqtt.Client) -> None:
        """Silence a replaced client: its thread, if it ever wakes, talks to no one and reconnects nowhere."""
        client.on_connect = client.on_disconnect = client.on_message = None
        try:
            client.disconnect()  # sent at once when its loop is dead; stops any reconnecting
        except Exception:  # noqa: BLE001 - a broken client may fail in any way; it is dropped anyway
            log.debug("disconnecting a replaced client failed", exc_info=True)
        sock = client.socket()
        if sock is not None:
            try:
                sock.close()  # the broker ends that session now, not at its keep-alive
            except OSError:
                pass

    def _link_down(self, why: str) -> None:
        self.status.connected.clear()
        self.status.last_error = why
        self.rt.metrics.broker_connected.set(0)

    # --- paho callbacks (network-loop thread): parse and tell, nothing else, never raise -----
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        try:
            if client is not self.client:
                return  # a replaced client
            if reason_code.is_failure:
                self.status.last_error = str(reason_code)
                log.error("broker refused the connection: %s", reason_code)
                return
            _no_delay(client)
            # The wildcards without their retained messages: a fleet's worth at once overflows the
            # broker's queue for this client. The actor fetches them per device, in batches.
            if self.per_device:
                # Cluster mode: only the owned devices' topics, each with its retained state.
                client.subscribe([(self._probe_topic, 0), (self._marker_topic, 1)])
            elif self.rt.config.mqtt_protocol == "5":
                no_retained = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
                client.subscribe([(topic, no_retained) for topic in self.rt.topics.subscriptions()]
                                 + [(self._probe_topic, SubscribeOptions(qos=0)),
                                    (self._marker_topic, SubscribeOptions(qos=1))])
            else:
                # MQTT 3.1.1 has no such option: most brokers send the retained messages with the
                # wildcards (as many as they queue for one client), RabbitMQ 3.x only for exact
                # filters. The fetch below brings them there; elsewhere a second copy of a snapshot.
                client.subscribe([(topic, 1) for topic in self.rt.topics.subscriptions()]
                                 + [(self._probe_topic, 0), (self._marker_topic, 1)])
            self.actor_ref.tell(_Fetch(client))
            self._connected_at = self._last_inbound = time.monotonic()
            self.status.connects += 1
            self.status.last_error = None
            self.status.silent = False
            self.status.connected.set()
            self.rt.metrics.broker_connected.set(1)
            log.info("connected to the broker (connection %d)", self.status.connects)
            self.notify_connected()
        except Exception:  # noqa: BLE001 - see the module's docstring
            log.exception("on_connect failed; the watchdog will judge the link")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        try:
            if client is not self.client:
                return
            self._down_since = time.monotonic()
            self._link_down(str(reason_code))
            log.warning("disconnected from the broker (%s); paho reconnects with backoff", reason_code)
        except Exception:  # noqa: BLE001
            log.exception("on_disconnect failed")

    def _on_message(self, client, userdata, msg):
        try:
            if client is not self.client:
                return
            self._last_inbound = time.monotonic()
            try:
                topic = msg.topic  # paho decodes it as UTF-8 here
            except UnicodeDecodeError:
                self._drop(Drop("topic", "topic is not UTF-8"), repr(getattr(msg, "_topic", b""))[:120], b"")
                return
            if topic == self._probe_topic:
                return
            if topic == self._marker_topic:
                if msg.payload.isdigit() and len(msg.payload) <= 9:  # our own marker; anything else is not
                    self.actor_ref.tell(_Marker(client, int(msg.payload)))
                return
            result = parse_inbound(self.rt.topics.prefix, self.rt.topics.legacy_base, topic, msg.payload,
                                   bool(msg.retain))
            if isinstance(result, Drop):
                self._drop(result, topic, msg.payload)
                return
            self.rt.metrics.mqtt_messages.labels(result.kind).inc()
            if msg.retain:
                self.rt.metrics.mqtt_retained.labels(result.kind).inc()
            outcome = self.route(result)
            if outcome != "ok":
                self._drop(Drop(outcome, f"device {result.device_id} ({result.protocol} topic)"), topic, b"")
        except Exception:  # noqa: BLE001 - see the module's docstring
            log.exception("handling an MQTT message failed; it is dropped")
            try:
                self.rt.metrics.mqtt_dropped.labels("internal").inc()
            except Exception:  # noqa: BLE001
                pass

    def _drop(self, drop: Drop, topic: str, payload: bytes) -> None:
        self.rt.metrics.mqtt_dropped.labels(drop.reason).inc()
        if drop.reason in ("unknown_device", "not_owned", "empty"):
            log.debug("MQTT message on %.120r dropped (%s)", topic, drop.reason)
            return
        if drop.reason != "wrong_protocol":
            self.rt.metrics.mqtt_malformed.inc()
        self._log_drop(drop.reason, topic, drop.detail, bytes(payload or b""))
