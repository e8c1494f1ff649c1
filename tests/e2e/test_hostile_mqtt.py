"""Hostile MQTT input (issue 10, findings 1 and 5): one bad message must never blind the server.

Each payload is published, as a buggy or hostile controller would, to a running server; the
server must drop it (counted in /metrics), answer /health quickly meanwhile, and still get a
normal activation's ON to its pump within 1 s. A watchdog test shows a dead paho loop revived.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import peewee
import pytest

from pumplink import config as configuration
from pumplink.devices.link import MqttActor
from pumplink.devices.protocol import Inbound
from pumplink.runtime import BrokerStatus, Runtime
from tests.e2e.test_broker_security import client as secured_client
from tests.e2e.test_broker_security import secured_broker  # noqa: F401 - a fixture, used below
from tests.e2e.test_metrics import metric
from tests.support import MQTT_URL, wait_until

# They measure how fast the server answers while it is under attack: run alone (make test),
# not beside another test process competing for the same two cores.
pytestmark = pytest.mark.solo

ON_WITHIN_S = 1.0
HEALTH_MAX_S = 0.1  # the bound, per request
BROKER_PORT = int(MQTT_URL.rsplit(":", 1)[1])


def attacker() -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", BROKER_PORT)
    c.loop_start()
    return c


def dropped(server, reason: str) -> float:
    return metric(server.api().get("/metrics").text, "pumplink_mqtt_dropped_total", f'{{reason="{reason}"}}')


def wait_dropped(server, reason: str, total: float, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (seen := dropped(server, reason)) < total:
        assert time.monotonic() < deadline, f"{what}: {seen:.0f} of {total:.0f} dropped as {reason} in {timeout}s"
        time.sleep(0.05)


def restarts(server) -> float:
    return metric(server.api().get("/metrics").text, "pumplink_mqtt_link_restarts_total")


class HealthProbe:
    """Asks GET /health back to back from another thread and keeps each answer's time."""

    def __init__(self, server):
        self.api, self.times, self.codes = server.api(), [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            t0 = time.perf_counter()
            r = self.api.get("health", timeout=5)
            self.times.append(time.perf_counter() - t0)
            self.codes.append(r.status_code)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def ready_pump(world, **fields):
    device_id = world.device(**fields)
    pump = world.pump(device_id, legacy=fields.get("protocol") == "legacy")
    wait_until(lambda: world.admin.get(f"devices/{device_id}").json()["state"] == "off", what="device reported off")
    return device_id, pump


def on_latency(user, device_id, pump) -> float:
    """Seconds from asking for a 1 s run to its pump hearing the ON; waits for the run to end."""
    before = len([c for c in pump.commands if c["action"] == "on"])
    t0 = time.monotonic()
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 202, r.text
    pump.wait_for(lambda p: len([c for c in p.commands if c["action"] == "on"]) > before, timeout=5,
                  what="the pump heard its ON")
    heard = [c for c in pump.commands if c["action"] == "on"][before]["at"]
    aid = r.json()["activation"]["id"]
    done = wait_until(lambda: (a := user.get(f"activations/{aid}").json())["state"] in ("completed", "failed") and a,
                      timeout=10, what="the run to end")
    assert done["state"] == "completed", done
    return heard - t0


# (name, topic (from prefix, legacy base, device id), payload, retained, drop reason, copies)
HOSTILE = [
    ("state JSON nested 100,000 deep", lambda p, l, d: f"{p}/devices/{d}/state",
     b"[" * 100_000 + b"]" * 100_000, False, "too_large", 20),
    ("state JSON nested 2,000 deep (small)", lambda p, l, d: f"{p}/devices/{d}/state",
     b"[" * 2000 + b"]" * 2000, False, "too_deep", 300),
    ("device id ²", lambda p, l, d: f"{p}/devices/²/state", b'{"state": "on", "reason": "manual"}', False,
     "device_id", 300),
    ("legacy device id ٣", lambda p, l, d: f"{l}/٣/status", b"on", False, "device_id", 300),
    ("1 MiB ack", lambda p, l, d: f"{p}/devices/{d}/ack", b"x" * (1 << 20), False, "too_large", 5),
    ("invalid UTF-8 state", lambda p, l, d: f"{p}/devices/{d}/state", b'{"state": "\xff\xfe"}', False, "utf8", 300),
    ("non-JSON ack", lambda p, l, d: f"{p}/devices/{d}/ack", b"ok", False, "json", 300),
    ("NaN remaining_s", lambda p, l, d: f"{p}/devices/{d}/state", b'{"state": "on", "remaining_s": NaN}', False,
     "json", 300),
    ("NUL in reason", lambda p, l, d: f"{p}/devices/{d}/state", b'{"state": "on", "reason": "a\\u0000b"}', False,
     "invalid", 300),
    ("flood of broken acks", lambda p, l, d: f"{p}/devices/{d}/ack", b"{", False, "json", 3000),
]


def test_hostile_payloads_never_blind_the_server(world):
    server = world.server
    device_id, pump = ready_pump(world, name="Target")
    user = world.user()
    bad = attacker()
    figures = []
    try:
        for name, topic_of, payload, retained, reason, copies in HOSTILE:
            topic = topic_of(server.prefix, server.legacy_base, device_id)
            before = dropped(server, reason)
            t0 = time.monotonic()
            with HealthProbe(server) as health:
                # In bursts of 500: the shared test broker queues at most 1000 messages for a
                # subscriber (Mosquitto's default) and would drop the rest itself.
                for sent in range(0, copies, 500):
                    burst = min(500, copies - sent)
                    for info in [bad.publish(topic, payload, qos=1, retain=retained) for _ in range(burst)]:
                        info.wait_for_publish(10)
                    wait_dropped(server, reason, before + sent + burst, name)
            handled_s = time.monotonic() - t0
            latency = on_latency(user, device_id, pump)
            figures.append((name, copies, handled_s, latency, health))
            assert health.codes and set(health.codes) == {200}, (name, health.codes)
            assert latency < ON_WITHIN_S, f"after {name}: ON reached the pump {latency:.3f}s after the request"
    finally:
        bad.loop_stop()
        bad.disconnect()
    print()
    print(f"{'payload':40} {'copies':>6} {'handled':>8} {'ON after':>9} {'/health n':>9} {'median':>7} {'max':>7}")
    for name, copies, handled_s, latency, health in figures:
        print(f"{name:40} {copies:6d} {handled_s:7.2f}s {latency * 1000:7.0f}ms {len(health.times):9d} "
              f"{statistics.median(health.times) * 1000:5.1f}ms {max(health.times) * 1000:5.1f}ms")
    every = [t for *_, health in figures for t in health.times]
    slow = sorted(every)[int(len(every) * 0.99)]
    print(f"/health over all {len(every)} requests: median {statistics.median(every) * 1000:.1f} ms, "
          f"p99 {slow * 1000:.1f} ms, max {max(every) * 1000:.1f} ms")
    assert slow < HEALTH_MAX_S, f"/health p99 {slow * 1000:.0f} ms while bad input was handled"
    assert max(every) < 5 * HEALTH_MAX_S, f"/health max {max(every) * 1000:.0f} ms"
    # The link was never lost, so nothing had to be revived, and /ready says so.
    assert restarts(server) == 0
    r = server.api().get("ready")
    assert r.status_code == 200 and r.json()["checks"]["broker"] == "ok", r.text


def test_an_ack_on_the_legacy_topic_does_not_start_a_pumplink_run(world):
    """Finding 5: a message counts only on its device's own protocol's topics."""
    server = world.server
    device_id = world.device(name="Silent pumplink pump")
    pump = world.pump(device_id, no_ack=True)  # hears the ON, never acks it: the ON stays pending
    wait_until(lambda: world.admin.get(f"devices/{device_id}").json()["state"] == "off", what="device reported off")
    user = world.user()
    bad = attacker()
    try:
        before = dropped(server, "wrong_protocol")
        r = user.post("activate", {"device_id": device_id, "duration_s": 1})
        assert r.status_code == 202, r.text
        aid = r.json()["activation"]["id"]
        pump.wait_for(lambda p: any(c["action"] == "on" for c in p.commands), what="the ON reached the pump")
        # The Go firmware's ack is any payload on device/{id}/ack: here it is a forgery.
        for payload in (b"ok", b"", b'{"id": "x", "ok": true}'):
            bad.publish(f"{server.legacy_base}/{device_id}/ack", payload, qos=1).wait_for_publish(5)
        bad.publish(f"{server.legacy_base}/{device_id}/status", b"on", qos=1).wait_for_publish(5)
        wait_until(lambda: dropped(server, "wrong_protocol") >= before + 4, what="the forged acks dropped")
        states = []
        done = wait_until(lambda: (states.append(a := user.get(f"activations/{aid}").json()["state"]) or
                                   a in ("completed", "failed", "stopped")) and a, timeout=15, what="the run to end")
        assert "running" not in states, states
        a = user.get(f"activations/{aid}").json()
        assert (done, a["reason"]) == ("failed", "ack_timeout"), a
    finally:
        bad.loop_stop()
        bad.disconnect()


def test_pumplink_topics_do_not_speak_for_a_legacy_device(world):
    server = world.server
    device_id, pump = ready_pump(world, name="Old pump", protocol="legacy")
    bad = attacker()
    try:
        before = dropped(server, "wrong_protocol")
        bad.publish(f"{server.prefix}/devices/{device_id}/state", b'{"state": "on", "reason": "manual"}',
                    qos=1).wait_for_publish(5)
        bad.publish(f"{server.prefix}/devices/{device_id}/availability", b"offline", qos=1).wait_for_publish(5)
        wait_until(lambda: dropped(server, "wrong_protocol") >= before + 2, what="the forged reports dropped")
        view = world.admin.get(f"devices/{device_id}").json()
        assert view["state"] == "off" and view["available"] is not False, view
        # And its own protocol still drives it.
        user = world.user()
        assert on_latency(user, device_id, pump) < ON_WITHIN_S
    finally:
        bad.loop_stop()
        bad.disconnect()
    pump.clear_retained()


def test_the_shipped_broker_config_refuses_oversized_messages(secured_broker):  # noqa: F811
    """The example Mosquitto config drops payloads over 4 KiB before any subscriber sees them."""
    b = secured_broker
    server, codes = secured_client(b["port"], "pumplink-server", b["server_pw"])
    assert codes and not codes[0].is_failure
    got, subscribed = [], threading.Event()
    server.on_message = lambda c, u, m: got.append(len(m.payload))
    server.on_subscribe = lambda *a, **k: subscribed.set()
    topic = f"{b['prefix']}/devices/1/state"
    server.subscribe(topic, qos=1)
    assert subscribed.wait(5)
    device, codes = secured_client(b["port"], "device-1", b["device_pw"][1])
    assert codes and not codes[0].is_failure
    for size in (4096 + 1, 4096):
        device.publish(topic, b"x" * size, qos=1).wait_for_publish(3)
    wait_until(lambda: 4096 in got, timeout=5, what="the 4 KiB message delivered")
    assert got == [4096], f"only the message within the limit is delivered: {got}"
    # A packet over max_packet_size costs its sender the connection.
    gone = threading.Event()
    device.on_disconnect = lambda *a, **k: gone.set()
    device.publish(topic, b"x" * 64 * 1024, qos=1)
    assert gone.wait(5), "the broker kept a client that sent a 64 KiB packet"
    assert got == [4096], got
    for c in (server, device):
        c.loop_stop()
        c.disconnect()


# --- the watchdog, in-process against the real broker ---------------------------------------
@pytest.fixture
def make_link():
    """MqttActors of the test's own, routing into a list; a fast watchdog unless told otherwise."""
    made = []

    def make(watchdog_s=0.1, probe_s=0.5, silence_s=1.5, stuck_s=5.0):
        prefix = f"plwd-{time.monotonic_ns()}"
        cfg = configuration.load({"PUMPLINK_MQTT_URL": MQTT_URL, "PUMPLINK_MQTT_PREFIX": prefix,
                                  "PUMPLINK_LEGACY_BASE": f"{prefix}-legacy",
                                  "PUMPLINK_DATABASE_URL": "sqlite:///:memory:"}, env_file=None)
        rt = Runtime.build(cfg, peewee.SqliteDatabase(":memory:"))
        status = BrokerStatus()
        got: list[Inbound] = []

        def route(inbound):
            got.append(inbound)
            return "ok"

        ref = MqttActor.start(rt, route, lambda: None, status, watchdog_s=watchdog_s, probe_s=probe_s,
                              silence_s=silence_s, stuck_s=stuck_s)
        ref.proxy().connect().get(timeout=5)
        assert status.connected.wait(5)
        wait_until(lambda: status.health() == "ok", timeout=5, what="link healthy")
        pub = attacker()
        made.append((ref, pub))
        return ref, status, got, pub, prefix

    yield make
    for ref, pub in made:
        pub.loop_stop()
        pub.disconnect()
        if ref.is_alive():
            ref.stop(timeout=5)


def delivered(got, pub, topic, payload, timeout=5) -> float:
    """Publish a device message and return the seconds until the actor routed it."""
    n = len(got)
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        pub.publish(topic, payload, qos=1).wait_for_publish(2)
        step = time.monotonic() + 0.3
        while time.monotonic() < step:
            if len(got) > n:
                return time.monotonic() - t0
            time.sleep(0.01)
    raise AssertionError(f"nothing routed from {topic} within {timeout}s")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # paho's thread dies on purpose
def test_a_dead_paho_loop_is_revived(make_link):
    ref, status, got, pub, prefix = make_link()
    state = f"{prefix}/devices/1/state"
    delivered(got, pub, state, b'{"state": "off"}')
    client = ref.proxy().client.get()

    # What finding 1 did: an exception escaping a paho callback ends paho's thread for good.
    def explode(c, u, m):
        raise ValueError("invalid literal for int() with base 10: '²'")

    client.message_callback_add(f"{prefix}/devices/+/state", explode)
    t0 = time.monotonic()
    pub.publish(state, b'{"state": "on"}', qos=1).wait_for_publish(2)
    wait_until(lambda: status.restarts >= 1, timeout=5, what="the watchdog replaced the dead client")
    noticed = time.monotonic() - t0
    assert status.last_restart == "loop_dead"
    wait_until(lambda: status.health() == "ok", timeout=10, what="the link healthy again")
    healthy = time.monotonic() - t0
    again = delivered(got, pub, state, b'{"state": "off"}')
    print(f"\ndead loop: replaced {noticed:.2f}s after the fatal message, healthy after {healthy:.2f}s, "
          f"next message routed in {again * 1000:.0f} ms")
    assert ref.proxy().client.get() is not client


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # paho's thread dies on purpose
def test_health_says_down_as_soon_as_the_loop_dies(make_link):
    """/ready reads the loop's life directly: it need not wait for the watchdog's next look."""
    ref, status, got, pub, prefix = make_link(watchdog_s=600)  # the watchdog will not look in this test
    client = ref.proxy().client.get()
    client.message_callback_add(f"{prefix}/devices/+/state", lambda c, u, m: 1 / 0)
    pub.publish(f"{prefix}/devices/1/state", b'{"state": "on"}', qos=1).wait_for_publish(2)
    wait_until(lambda: status.health() != "ok", timeout=2, what="health to say the link is down")
    assert status.health() == "down: network loop not running" and status.restarts == 0


def test_a_stalled_loop_is_replaced(make_link):
    ref, status, got, pub, prefix = make_link()
    state = f"{prefix}/devices/2/state"
    client = ref.proxy().client.get()
    release = threading.Event()
    # The loop thread lives but reads nothing more (a callback that never returns).
    client.message_callback_add(f"{prefix}/devices/+/state", lambda c, u, m: release.wait(20))
    t0 = time.monotonic()
    pub.publish(state, b'{"state": "on"}', qos=1).wait_for_publish(2)
    wait_until(lambda: status.health() != "ok", timeout=5, what="/ready-level health to say the link is down")
    down_after = time.monotonic() - t0
    wait_until(lambda: status.restarts >= 1, timeout=10, what="the watchdog replaced the stalled client")
    assert status.last_restart == "silent"
    wait_until(lambda: status.health() == "ok", timeout=10, what="the link healthy again")
    again = delivered(got, pub, state, b'{"state": "off"}')
    replaced = time.monotonic() - t0
    release.set()  # the old thread wakes into a retired client: nothing of it is routed
    n = len(got)
    time.sleep(0.3)
    assert all(i.device_id == 2 for i in got[n:])
    print(f"\nstalled loop: health down after {down_after:.2f}s, replaced and routing again after {replaced:.2f}s "
          f"(next message {again * 1000:.0f} ms)")


def test_ready_answers_503_when_the_link_does_not_work(server_factory, private_broker):
    """/ready is judged by the link: the broker gone means 503 with the reason."""
    server = server_factory(PUMPLINK_MQTT_URL=private_broker.url)
    wait_until(lambda: server.api().get("ready").status_code == 200, what="ready")
    private_broker.stop()
    body = wait_until(lambda: (r := server.api().get("ready")).status_code == 503 and r.json(), timeout=10,
                      what="/ready to answer 503")
    assert body["checks"]["broker"] == "down" and "broker (not connected" in body["error"], body


GEVENT_SCRIPT = r'''
from gevent import monkey; monkey.patch_all()  # as the server's worker runs
import sys, time, peewee
import paho.mqtt.client as mqtt
from pumplink import config as configuration
from pumplink.devices.link import MqttActor
from pumplink.runtime import BrokerStatus, Runtime

url, prefix = sys.argv[1], sys.argv[2]
cfg = configuration.load({"PUMPLINK_MQTT_URL": url, "PUMPLINK_MQTT_PREFIX": prefix,
                          "PUMPLINK_LEGACY_BASE": prefix + "-legacy", "PUMPLINK_DATABASE_URL": "sqlite:///:memory:"},
                         env_file=None)
status, got = BrokerStatus(), []
ref = MqttActor.start(Runtime.build(cfg, peewee.SqliteDatabase(":memory:")), lambda i: got.append(i) or "ok",
                      lambda: None, status, watchdog_s=0.2)
ref.proxy().connect().get(timeout=5)
assert status.connected.wait(5)
pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
pub.connect(url.rsplit(":", 1)[0].rsplit("/", 1)[1], int(url.rsplit(":", 1)[1]))
pub.loop_start()
def explode(c, u, m):
    raise ValueError("boom")
ref.proxy().client.get().message_callback_add(prefix + "/devices/+/state", explode)
pub.publish(prefix + "/devices/1/state", b'{"state": "on"}', qos=1).wait_for_publish(2)
deadline = time.monotonic() + 5
while not (status.restarts and status.health() == "ok") and time.monotonic() < deadline:
    time.sleep(0.05)
print("revived", status.restarts, status.last_restart, status.health())
n = len(got)
pub.publish(prefix + "/devices/1/state", b'{"state": "off"}', qos=1).wait_for_publish(2)
while len(got) == n and time.monotonic() < deadline + 5:
    time.sleep(0.05)
print("routed", len(got) - n)
ref.stop(timeout=5)
'''


def test_a_dead_loop_is_revived_under_gevent(tmp_path):
    """The same revival inside a gevent-patched process, where paho's thread is a greenlet."""
    script = tmp_path / "revive.py"
    script.write_text(GEVENT_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script), MQTT_URL, f"plgv-{time.monotonic_ns()}"], cwd=root,
                         capture_output=True, text=True, timeout=30)
    assert "revived 1 loop_dead ok" in out.stdout and "routed 1" in out.stdout, out.stdout + out.stderr[-2000:]


def test_a_device_whose_protocol_is_changed_is_heard_on_its_new_topics(world):
    """After PATCH protocol=legacy, the device's legacy controller is heard (and its old topics are not)."""
    device_id, pumplink_pump = ready_pump(world, name="Reflashed")
    # Its old firmware goes quietly (an "offline" would stick: legacy controllers never say "online").
    pumplink_pump.clear_retained()
    pumplink_pump.client.disconnect()
    pumplink_pump.client.loop_stop()
    r = world.admin.patch(f"devices/{device_id}", {"protocol": "legacy"})
    assert r.status_code == 200 and r.json()["protocol"] == "legacy", r.text
    pump = world.pump(device_id, legacy=True)
    user = world.user()
    latency = on_latency(user, device_id, pump)
    assert latency < ON_WITHIN_S
    bad = attacker()
    try:
        before = dropped(world.server, "wrong_protocol")
        bad.publish(f"{world.server.prefix}/devices/{device_id}/state", b'{"state": "on", "reason": "manual"}',
                    qos=1).wait_for_publish(5)
        wait_until(lambda: dropped(world.server, "wrong_protocol") > before, what="the old topic's report dropped")
    finally:
        bad.loop_stop()
        bad.disconnect()
    pump.clear_retained()
