"""Simulated pump controllers speaking MQTT.md v1 (or the legacy plain-text protocol).

Each one keeps its own OFF timer and Last Will, as real firmware must, and records what it
did so tests can check what a real pump would have done.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
import uuid
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class SimulatedPump:
    def __init__(self, mqtt_url: str, prefix: str, device_id: int, *, ack_delay: float = 0.0,
                 no_ack: bool = False, legacy: bool = False, legacy_base: str = "device",
                 refuse: str | None = None, ignore_offs: int = 0, refuse_offs: int = 0):
        self.url = urlsplit(mqtt_url)
        self.prefix = prefix
        self.device_id = device_id
        self.ack_delay = ack_delay
        self.no_ack = no_ack
        self.legacy = legacy
        self.legacy_base = legacy_base
        self.refuse = refuse  # when set, ON commands are refused with this error
        # The first N OFF commands are lost on the way (neither obeyed nor acked), or refused
        # (a stuck relay: acked with ok false, the pump keeps running).
        self.ignore_offs = ignore_offs
        self.refuse_offs = refuse_offs
        self.state = "off"
        self.on_since: float | None = None
        self.ends_at: float | None = None
        self.runs: list[dict] = []  # {"on": t, "off": t, "reason": ...} in monotonic seconds
        self.commands: list[dict] = []  # every command received, duplicates included
        self._seen: set[str] = set()
        self._timer: threading.Timer | None = None
        self._cond = threading.Condition()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"sim-{device_id}-{uuid.uuid4().hex[:8]}", clean_session=True)
        if self.url.username:
            self.client.username_pw_set(unquote(self.url.username), unquote(self.url.password or ""))
        if not legacy:
            self.client.will_set(self.topic("availability"), "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a, **k: self.connected.clear()
        self.client.reconnect_delay_set(0.2, 2)

    # --- topics --------------------------------------------------------------------------------
    def topic(self, kind: str) -> str:
        if self.legacy:
            return f"{self.legacy_base}/{self.device_id}/{kind}"
        return f"{self.prefix}/devices/{self.device_id}/{kind}"

    @property
    def command_topic(self) -> str:
        return f"{self.legacy_base}/control" if self.legacy else self.topic("command")

    # --- life ------------------------------------------------------------------------------
    def start(self, wait: float = 5.0) -> "SimulatedPump":
        self.client.connect(self.url.hostname, self.url.port or 1883, keepalive=5)
        self.client.loop_start()
        if not self.connected.wait(wait):
            raise TimeoutError(f"simulated pump {self.device_id} could not connect to the broker")
        return self

    def stop(self) -> None:
        """A clean shutdown: the pump goes off and says it is offline."""
        self._switch("off", "command")
        if not self.legacy:
            self.client.publish(self.topic("availability"), "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    def power_loss(self) -> None:
        """The link drops without a goodbye: the broker publishes the Last Will."""
        self._cancel_timer()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def clear_retained(self) -> None:
        for kind in (("status",) if self.legacy else ("state", "availability")):
            self.client.publish(self.topic(kind), b"", qos=1, retain=True).wait_for_publish(2)

    # --- behaviour -------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        sock = client.socket()
        if sock is not None:  # acks are tiny: do not let them wait for a delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(self.command_topic, qos=1)
        if not self.legacy:
            client.publish(self.topic("availability"), "online", qos=1, retain=True)
        self._publish_state("boot" if not self.runs and self.state == "off" else "command")
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        if msg.topic != self.command_topic:
            return  # some brokers (amqtt) echo retained messages of other topics on subscribe
        if self.legacy:
            action, command_id, duration = msg.payload.decode(errors="replace").strip().lower(), None, None
            if action not in ("on", "off"):
                return
        else:
            try:
                body = json.loads(msg.payload)
                action, command_id, duration = body["action"], body["id"], body.get("duration_s")
            except (ValueError, KeyError, TypeError):
                log.warning("pump %s: malformed command %r", self.device_id, msg.payload)
                return
        with self._cond:
            self.commands.append({"action": action, "id": command_id, "duration_s": duration, "at": time.monotonic()})
            self._cond.notify_all()
        if self.no_ack:
            return
        if action == "off" and self.ignore_offs > 0:
            self.ignore_offs -= 1
            return
        if action == "off" and self.refuse_offs > 0:
            self.refuse_offs -= 1
            self._ack(command_id, False, "relay stuck")
            return
        if self.ack_delay:
            threading.Timer(self.ack_delay, self._act, args=(action, command_id, duration)).start()
        else:
            self._act(action, command_id, duration)

    def _act(self, action: str, command_id: str | None, duration: float | None) -> None:
        first_time = command_id is None or command_id not in self._seen
        if command_id is not None:
            self._seen.add(command_id)
        if action == "on" and self.refuse:
            self._ack(command_id, False, self.refuse)
            return
        if first_time:
            if action == "on":
                self._switch("on", "command", duration)
            else:
                self._switch("off", "command")
        self._ack(command_id, True)

    def _ack(self, command_id, ok: bool, error: str | None = None) -> None:
        if self.legacy:
            self.client.publish(self.topic("ack"), "ok" if ok else "error", qos=1)
            self.client.publish(self.topic("status"), self.state, qos=1, retain=True)
            return
        body = {"id": command_id, "ok": ok, "state": self.state}
        if error:
            body["error"] = error
        self.client.publish(self.topic("ack"), json.dumps(body), qos=1)

    def _switch(self, state: str, reason: str, duration: float | None = None) -> None:
        with self._cond:
            now = time.monotonic()
            if state == "on":
                self._cancel_timer()
                if duration and not self.legacy:
                    # The pump's own safety: it switches itself off without the server.
                    self.ends_at = now + duration
                    self._timer = threading.Timer(duration, self._timer_fired)
                    self._timer.daemon = True
                    self._timer.start()
                if self.state != "on":
                    self.on_since = now
                    self.runs.append({"on": now, "off": None, "reason": None, "duration_s": duration})
                self.state = "on"
            else:
                self._cancel_timer()
                if self.state == "on" and self.runs:
                    self.runs[-1].update(off=now, reason=reason)
                self.state, self.on_since = "off", None
            self._cond.notify_all()
        if not self.legacy:
            self._publish_state(reason)

    def _timer_fired(self) -> None:
        self._switch("off", "timer")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _publish_state(self, reason: str) -> None:
        if self.legacy:
            self.client.publish(self.topic("status"), self.state, qos=1, retain=True)
            return
        body = {"state": self.state, "reason": reason}
        if self.state == "on" and self._timer is not None and self.ends_at is not None:
            body["remaining_s"] = max(0, round(self.ends_at - time.monotonic(), 1))
        self.client.publish(self.topic("state"), json.dumps(body), qos=1, retain=True)

    def manual(self, state: str) -> None:
        """Someone flips the local switch."""
        self._switch(state, "manual")

    def fault(self) -> None:
        self._switch("off", "fault")

    # --- for tests -------------------------------------------------------------------------
    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition"):
        return wait_on(self._cond, lambda: predicate(self), timeout, lambda: f"pump {self.device_id}: timed out "
                       f"waiting for {what}")


def wait_on(cond: threading.Condition, predicate, timeout: float, failure) -> object:
    """Wait until ``predicate()`` is true, woken by ``cond``; AssertionError with ``failure()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(failure())
            cond.wait(min(left, 0.2))


def run_simulator(config, args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ids = [int(i) for i in args.ids.split(",")] if args.ids else list(range(1, args.devices + 1))
    pumps = [SimulatedPump(config.mqtt_url, config.mqtt_prefix, i, ack_delay=args.ack_delay, no_ack=args.no_ack,
                           legacy=args.legacy, legacy_base=config.legacy_base).start() for i in ids]
    print(f"simulating {len(pumps)} pump(s) {ids} on {config.mqtt_url} (prefix {config.mqtt_prefix}); Ctrl-C stops",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    for pump in pumps:
        pump.stop()
    return 0
