"""Hundreds of MQTT.md v1 pumps on a few paho clients, each keeping its own OFF timer.

Like bench's PumpFleet, but each pump behaves as firmware must: an ON carries ``duration_s`` and
the pump switches itself off when it runs out, whatever the server does. Every run and every
command (with the cluster's ``node`` and ``epoch`` fields) is recorded in monotonic time.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt


class Fleet:
    def __init__(self, mqtt_url: str, prefix: str, device_ids: list[int], clients: int = 3):
        self.url = urlsplit(mqtt_url)
        self.prefix = prefix
        self.device_ids = list(device_ids)
        self.state = {d: "off" for d in self.device_ids}
        self.runs: dict[int, list[dict]] = {d: [] for d in self.device_ids}  # {"on", "off", "planned_off", "why"}
        self.commands: dict[int, list[dict]] = {d: [] for d in self.device_ids}
        self._timers: dict[int, threading.Timer] = {}
        self.no_timer: set[int] = set()  # pumps that rely on the server's OFF alone
        self._cond = threading.Condition()
        self._clients: list[tuple[mqtt.Client, list[int], threading.Event]] = []
        self._client_of: dict[int, mqtt.Client] = {}
        for n in range(clients):
            chunk = self.device_ids[n::clients]
            if not chunk:
                continue
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{n}-{uuid.uuid4().hex[:8]}")
            client.max_inflight_messages_set(1000)
            ready = threading.Event()
            client.on_connect = self._on_connect(chunk, ready)
            client.on_message = self._on_message
            self._clients.append((client, chunk, ready))
            for d in chunk:
                self._client_of[d] = client

    def topic(self, device_id: int, kind: str) -> str:
        return f"{self.prefix}/devices/{device_id}/{kind}"

    def start(self, timeout: float = 30.0) -> "Fleet":
        for client, _, _ in self._clients:
            client.connect(self.url.hostname, self.url.port or 1883, keepalive=30)
            client.loop_start()
        deadline = time.monotonic() + timeout
        for _, _, ready in self._clients:
            if not ready.wait(max(0.1, deadline - time.monotonic())):
                raise TimeoutError("the fleet could not connect and subscribe")
        infos = []
        for d in self.device_ids:
            client = self._client_of[d]
            infos.append(client.publish(self.topic(d, "availability"), "online", qos=1, retain=True))
            infos.append(client.publish(self.topic(d, "state"), json.dumps({"state": "off", "reason": "boot"}),
                                        qos=1, retain=True))
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        return self

    def _on_connect(self, chunk, ready):
        def on_connect(client, userdata, flags, reason_code, properties=None):
            mids = set()

            def on_subscribe(client, userdata, mid, reason_codes, properties=None):
                mids.discard(mid)
                if not mids:
                    ready.set()

            client.on_subscribe = on_subscribe
            for i in range(0, len(chunk), 100):
                _, mid = client.subscribe([(self.topic(d, "command"), 1) for d in chunk[i:i + 100]])
                mids.add(mid)
        return on_connect

    def _on_message(self, client, userdata, msg):
        try:
            device_id = int(msg.topic.split("/")[-2])
            body = json.loads(msg.payload)
            action, command_id = body["action"], body["id"]
        except (ValueError, KeyError, TypeError, IndexError):
            return
        now = time.monotonic()
        with self._cond:
            self.commands[device_id].append({**body, "at": now})
            if action == "on":
                duration = float(body.get("duration_s") or 0)
                if self.state[device_id] != "on":
                    self.runs[device_id].append({"on": now, "off": None, "planned_off": now + duration})
                else:
                    self.runs[device_id][-1]["planned_off"] = now + duration
                self.state[device_id] = "on"
                if device_id not in self.no_timer:
                    self._arm(device_id, duration)
            else:
                self._off(device_id, "command")
            self._cond.notify_all()
        client.publish(self.topic(device_id, "ack"),
                       json.dumps({"id": command_id, "ok": True, "state": self.state[device_id]}), qos=1)
        report = {"state": self.state[device_id], "reason": "command"}
        if action == "on":
            report["remaining_s"] = body.get("duration_s")
        client.publish(self.topic(device_id, "state"), json.dumps(report), qos=1, retain=True)

    def _arm(self, device_id: int, duration: float) -> None:
        old = self._timers.pop(device_id, None)
        if old is not None:
            old.cancel()
        timer = threading.Timer(duration, self._expire, args=(device_id,))
        timer.daemon = True
        self._timers[device_id] = timer
        timer.start()

    def _expire(self, device_id: int) -> None:
        with self._cond:
            if self.state[device_id] != "on":
                return
            self._off(device_id, "timer")
            self._cond.notify_all()
        self._client_of[device_id].publish(self.topic(device_id, "state"),
                                           json.dumps({"state": "off", "reason": "timer"}), qos=1, retain=True)

    def _off(self, device_id: int, why: str) -> None:
        if self.state[device_id] == "on":
            self.runs[device_id][-1].update(off=time.monotonic(), why=why)
        self.state[device_id] = "off"
        timer = self._timers.pop(device_id, None)
        if timer is not None:
            timer.cancel()

    def wait_for(self, predicate, timeout: float, what: str):
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def close(self) -> None:
        for timer in list(self._timers.values()):
            timer.cancel()
        for client, chunk, _ in self._clients:
            infos = [client.publish(self.topic(d, kind), b"", qos=1, retain=True)
                     for d in chunk for kind in ("availability", "state")]
            for info in infos[-20:]:
                info.wait_for_publish(5)
            client.disconnect()
            client.loop_stop()
