"""State reports: MQTT state messages ingested per second (each recorded and broadcast).

    .venv/bin/python -m bench.bench_state_reports [--devices 200] [--rounds 20]

Pumps report manual ON/OFF changes (``{"state": "on"|"off", "reason": "manual"}``, QoS 1,
retained, as MQTT.md says) across many devices; every change opens or closes a session,
writes a log row and is broadcast. The server has ingested a change when its log row is in
the database and a JSON WebSocket client has received its ``device.state`` event; the rate is
messages / (time of the last of both - time of the first publish). The baseline is a raw paho
subscriber (own process) receiving the same messages from the same publisher and broker.

The publisher keeps at most ``WINDOW`` changes ahead of what the consumer has shown (events
received; the raw subscriber's progress lines): Mosquitto queues at most 1000 messages
(``max_queued_messages``) for a subscriber that lags and drops the rest, so an open-loop burst
measures the broker's queue, not the server. That burst is measured too, separately: how many
of its changes the server recorded at all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import websocket

from .common import (ROOT, BenchServer, Context, CpuMeter, Profile, clear_retained, fmt_row, insert_devices,
                     print_profile, sql_scalar, table_header)
from harness import MQTT_URL


def _messages(prefix: str, devices: list[int], rounds: int) -> list[tuple[str, bytes]]:
    """Round-robin over devices, each alternating on/off: every message is a change."""
    out = []
    for r in range(rounds):
        body = json.dumps({"state": "on" if r % 2 == 0 else "off", "reason": "manual"}).encode()
        out.extend((f"{prefix}/devices/{d}/state", body) for d in devices)
    return out


WINDOW = 500  # changes in flight to the consumer; half of Mosquitto's default per-client queue


class Progress:
    """How many messages a consumer has shown it handled; the publisher waits on it."""

    def __init__(self):
        self.count = 0
        self.last = 0.0
        self.cond = threading.Condition()

    def set(self, count: int) -> None:
        with self.cond:
            self.count, self.last = count, time.monotonic()
            self.cond.notify_all()

    def wait_for(self, count: int, deadline: float) -> None:
        with self.cond:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the consumer stalled at {self.count} messages (waiting for {count})")
                self.cond.wait(min(left, 0.5))


def _publish(messages: list[tuple[str, bytes]], progress: Progress | None = None, timeout: float = 120.0
             ) -> tuple[float, float]:
    """Publish every message (QoS 1, retained), at most WINDOW ahead of ``progress`` when given;
    (monotonic start, seconds until the broker had them all)."""
    url = urlsplit(MQTT_URL)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-reporter-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(url.hostname, url.port or 1883, keepalive=30)
    client.loop_start()
    try:
        began = time.monotonic()
        deadline = began + timeout
        infos = []
        for k, (topic, body) in enumerate(messages):
            if progress is not None and k >= WINDOW:
                progress.wait_for(k - WINDOW + 1, deadline)
            infos.append(client.publish(topic, body, qos=1, retain=True))
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        return began, time.monotonic() - began
    finally:
        client.disconnect()
        client.loop_stop()


def _raw_receiver_child() -> None:
    """Child process: subscribe, say 'ready', count ``expected`` messages, print the last arrival."""
    spec = json.loads(sys.stdin.readline())
    url = urlsplit(spec["mqtt_url"])
    got = {"n": 0, "last": 0.0, "first": 0.0}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client, userdata, msg):
        if not msg.payload:
            return
        got["n"] += 1
        got["last"] = time.monotonic()
        if got["n"] == 1:
            got["first"] = got["last"]
        if got["n"] % 50 == 0 or got["n"] >= spec["expected"]:
            print(got["n"], flush=True)  # progress, for the publisher's window
        if got["n"] >= spec["expected"]:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *a, **k: c.subscribe(spec["topic"], qos=1)
    client.on_subscribe = lambda *a, **k: subscribed.set()
    client.on_message = on_message
    client.connect(url.hostname, url.port or 1883, keepalive=30)
    client.loop_start()
    subscribed.wait(10)
    print("ready", flush=True)
    done.wait(spec["timeout"])
    client.disconnect()
    client.loop_stop()
    print("result " + json.dumps(got), flush=True)


def _raw_rate(prefix: str, devices: list[int], rounds: int) -> dict:
    messages = _messages(prefix, devices, rounds)
    spec = {"mqtt_url": MQTT_URL, "topic": f"{prefix}/devices/+/state", "expected": len(messages), "timeout": 60}
    code = "import bench.bench_state_reports as b; b._raw_receiver_child()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        child.stdin.write(json.dumps(spec) + "\n")
        child.stdin.flush()
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the raw MQTT receiver did not start")
        progress = Progress()
        final: dict = {}

        def read_progress():
            for line in child.stdout:
                if line.startswith("result "):
                    final.update(json.loads(line[7:]))
                    progress.set(progress.count)
                    return
                progress.set(int(line))

        reader = threading.Thread(target=read_progress, daemon=True)
        reader.start()
        began, publish_s = _publish(messages, progress)
        reader.join(60)
        child.wait(30)
        got = final or {"n": progress.count, "last": progress.last}
    finally:
        if child.poll() is None:
            child.kill()
        clear_retained(prefix, devices, kinds=("state",))
    if got["n"] < len(messages):
        raise RuntimeError(f"the raw receiver got {got['n']} of {len(messages)} messages")
    seconds = got["last"] - began
    return {"messages": len(messages), "seconds": round(seconds, 3), "per_s": round(len(messages) / seconds, 1),
            "publish_s": round(publish_s, 3)}


class _LiveClient:
    """A JSON WebSocket client counting ``device.state`` events of the bench's devices."""

    def __init__(self, base: str, token: str, devices: set[int], expected: int):
        url = base.replace("http://", "ws://") + f"/api/v1/ws?format=json&token={token}"
        self.ws = websocket.create_connection(url, timeout=30)
        first = json.loads(self.ws.recv())
        if first.get("type") != "snapshot":
            raise RuntimeError(f"expected a snapshot first, got {first}")
        self.devices, self.expected = devices, expected
        self.count, self.frames, self.last = 0, 0, 0.0
        self.progress = Progress()
        self.done = threading.Event()
        self.error: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while not self.done.is_set():
                frame = self.ws.recv()
                if not frame:
                    self.error = "the server closed the WebSocket"
                    return
                body = json.loads(frame)
                if body.get("type") == "device.state" and body.get("device_id") in self.devices:
                    # An event that stands for changes the client skipped (it was behind, or the
                    # device was debounced) counts for them too: each change reached the live view.
                    self.count += 1 + int(body.get("skipped") or 0)
                    self.frames += 1
                    self.last = time.monotonic()
                    self.progress.set(self.count)
                    if self.count >= self.expected:
                        self.done.set()
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.done.set()
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass


def _server_rate(bs: BenchServer, devices: list[int], rounds: int, first_log_id: int) -> dict:
    messages = _messages(bs.prefix, devices, rounds)
    admin = bs.admin()
    live = _LiveClient(bs.base, admin.token, set(devices), len(messages))
    try:
        began, publish_s = _publish(messages, live.progress)
        deadline = time.monotonic() + 120
        rows = 0
        rows_at = None
        while time.monotonic() < deadline:
            rows = sql_scalar(bs.url, "SELECT count(*) FROM device_log WHERE id > %s AND device_id = ANY(%s)",
                              (first_log_id, devices))
            if rows >= len(messages) and rows_at is None:
                rows_at = time.monotonic()
            if rows_at is not None and live.done.is_set():
                break
            if live.error:
                raise RuntimeError(f"the live client failed: {live.error}")
            time.sleep(0.01)
        if rows < len(messages) or not live.done.is_set():
            raise RuntimeError(f"after 120 s: {rows} log rows and {live.count} events of {len(messages)} changes")
        end = max(rows_at, live.last)
        seconds = end - began
        return {"messages": len(messages), "seconds": round(seconds, 3), "per_s": round(len(messages) / seconds, 1),
                "publish_s": round(publish_s, 3), "log_rows": rows, "events_received": live.count, "frames_received": live.frames,
                "last_row_s": round(rows_at - began, 3), "last_event_s": round(live.last - began, 3)}
    finally:
        live.close()


def _burst(bs: BenchServer, devices: list[int], rounds: int, first_log_id: int, quiet_s: float = 3.0) -> dict:
    """All changes at once, no window: how many does the server record at all?"""
    messages = _messages(bs.prefix, devices, rounds)
    began, publish_s = _publish(messages)
    deadline = time.monotonic() + 90
    rows, changed_at = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_rows = sql_scalar(bs.url, "SELECT count(*) FROM device_log WHERE id > %s AND device_id = ANY(%s)",
                              (first_log_id, devices))
        if now_rows != rows:
            rows, changed_at = now_rows, time.monotonic()
        elif time.monotonic() - changed_at >= quiet_s or rows >= len(messages):
            break
        time.sleep(0.05)
    return {"messages": len(messages), "changes_recorded": rows, "publish_s": round(publish_s, 3),
            "last_row_s": round(changed_at - began, 3)}


def run(ctx: Context, devices: int | None = None, rounds: int | None = None) -> dict:
    count = devices or (100 if ctx.quick else 200)
    rounds = rounds or (10 if ctx.quick else 20)
    bs = BenchServer(ctx, "reports")
    ids: list[int] = []
    try:
        bs.prepare()
        ids = insert_devices(bs.url, count)
        bs.start(timeout=120)
        raw = _raw_rate(f"{bs.prefix}-raw", ids, rounds)
        with CpuMeter(bs.worker) as cpu:
            served = _server_rate(bs, ids, rounds, 0)
        sessions = sql_scalar(bs.url, "SELECT count(*) FROM session WHERE device_id = ANY(%s)", (ids,))
        result = {
            "devices": count, "rounds": rounds, "window": WINDOW, "server": served, "raw_paho": raw,
            "ratio": round(served["per_s"] / raw["per_s"], 3),
            "sessions_recorded": sessions, "server_worker_cpu_percent": cpu.percent,
        }
        if ctx.profile:
            last = sql_scalar(bs.url, "SELECT coalesce(max(id), 0) FROM device_log")
            with Profile(bs.worker, ctx.log_dir / "profile_state_reports.txt",
                         seconds=max(3.0, served["seconds"])) as prof:
                _server_rate(bs, ids, rounds, last)
            result["profile"] = prof.summary
            result["profile_file"] = str(prof.out)
        # Last, as it may leave devices out of step (a lost ON makes the following OFF no change).
        result["burst"] = _burst(bs, ids, rounds, sql_scalar(bs.url, "SELECT coalesce(max(id), 0) FROM device_log"))
        return result
    finally:
        bs.close()
        if ids:
            clear_retained(bs.prefix, ids, kinds=("state",))


def report(result: dict) -> None:
    s, raw = result["server"], result["raw_paho"]
    print(f"\nState reports ({s['messages']} changes over {result['devices']} devices, "
          f"at most {result['window']} ahead of the consumer)")
    print(table_header("msgs/s", "raw paho/s"))
    print(fmt_row("ingested (row written + broadcast)", s["per_s"], raw["per_s"], result["ratio"]))
    print(f"  server: last log row at {s['last_row_s']} s, last WebSocket event at {s['last_event_s']} s; "
          f"publisher done at {s['publish_s']} s; worker CPU {result['server_worker_cpu_percent']} %")
    print(f"  recorded: {s['log_rows']} log rows, {result['sessions_recorded']} sessions, "
          f"{s['events_received']} events received")
    b = result.get("burst")
    if b:
        print(f"  open-loop burst of {b['messages']} changes (no window): {b['changes_recorded']} recorded "
              f"(the broker drops what its per-client queue cannot hold)")
    print_profile("server worker ingesting state reports", result.get("profile"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also record the worker with py-spy")
    args = parser.parse_args(argv)
    ctx = Context.make(quick=args.quick, profile=args.profile)
    result = run(ctx, args.devices, args.rounds)
    report(result)
    print(f"\nserver logs in {ctx.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
