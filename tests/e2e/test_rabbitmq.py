"""A second broker: the real server against RabbitMQ's MQTT plugin (3.10: MQTT 3.1.1 only).

RabbitMQ runs as a private node of this module's own (tests/rabbitmq.py). Pumps report while no
server runs, so what the server knows after start-up came from retained messages alone; then
one activation runs end to end and a WebSocket client sees it. The same scenario on Mosquitto
with MQTT 3.1.1 is the control: what passes there and fails on RabbitMQ is RabbitMQ's doing.
"""

from __future__ import annotations

import json
import threading
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest

from pumplink.devices.simulator import SimulatedPump
from tests.conftest import World
from tests.e2e.test_ws import connect, recv_json, recv_until, ws_url
from tests.rabbitmq import RABBITMQ_SERVER, RabbitMQ
from tests.support import MQTT_URL, wait_until

RUN_S = 2
needs_rabbitmq = pytest.mark.skipif(
    not RABBITMQ_SERVER.exists(), reason=f"{RABBITMQ_SERVER} is absent (apt-get install rabbitmq-server; .ci/run does)")


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory):
    broker = RabbitMQ(tmp_path_factory.mktemp("rabbitmq")).start()
    yield broker
    broker.stop()


def retained(url: str, topics: list[str], predicate, timeout: float = 1.0) -> dict:
    """The retained messages on ``topics`` that a fresh client, subscribing each exactly, is sent."""
    got: dict[str, bytes] = {}
    cond = threading.Condition()

    def on_message(client, userdata, msg):
        with cond:
            if msg.retain:
                got[msg.topic] = msg.payload
                cond.notify_all()

    where = urlsplit(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"observer-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.connect(where.hostname, where.port, keepalive=10)
    client.loop_start()
    try:
        client.subscribe([(topic, 1) for topic in topics])
        with cond:
            cond.wait_for(lambda: predicate(got), timeout)  # the caller judges what came
            return dict(got)
    finally:
        client.disconnect()
        client.loop_stop()


def device(api, device_id: int) -> dict:
    r = api.get(f"devices/{device_id}")
    assert r.status_code == 200, r.text
    return r.json()


def run_scenario(server_factory, url: str) -> None:
    server = server_factory(PUMPLINK_MQTT_URL=url, PUMPLINK_MQTT_PROTOCOL="3.1.1")
    world = World(server)
    try:
        a, b = world.device("Broker A"), world.device("Broker B")
        user = world.user()
        assert device(user, a)["state"] == device(user, b)["state"] == "unknown"
        server.stop()

        # While no server runs: A reports off and online (retained); B does too, then loses its
        # link without a goodbye, and the broker publishes its Last Will (offline, retained).
        pump = SimulatedPump(url, server.prefix, a, legacy_base=server.legacy_base).start()
        world.pumps.append(pump)
        lost = SimulatedPump(url, server.prefix, b, legacy_base=server.legacy_base).start()
        lost.power_loss()
        topics = [pump.topic("state"), pump.topic("availability"), lost.topic("availability")]

        def reported(got: dict) -> bool:
            state = json.loads(got.get(topics[0], b"{}")).get("state")
            return (state, got.get(topics[1]), got.get(topics[2])) == ("off", b"online", b"offline")

        wait_until(lambda: reported(retained(url, topics, reported)), what="the broker to retain both reports")

        server.start()
        # (1) Known from the retained messages alone: neither pump publishes after this start.
        wait_until(lambda: device(user, a)["state"] == "off", what="A's retained state")
        wait_until(lambda: device(user, b)["state"] == "offline", what="B's retained Last Will")
        assert pump.commands == [], "the server asked the pump nothing: what it knows came from the broker"
        ws = connect(ws_url(server), token=user.token)
        snapshot = recv_json(ws)
        assert snapshot["type"] == "snapshot"
        assert {d["device_id"]: d["state"] for d in snapshot["devices"]}[a] == "off"

        # (2) One run: the pump gets ON with its duration, holds it, and is off on time.
        r = user.post("activate", {"device_id": a, "duration_s": RUN_S})
        assert r.status_code == 202, r.text
        activation_id = r.json()["activation"]["id"]
        pump.wait_for(lambda p: p.state == "on", what="pump on")
        assert [c["duration_s"] for c in pump.commands if c["action"] == "on"] == [RUN_S]
        done = wait_until(lambda: (x := user.get(f"activations/{activation_id}").json())["state"] == "completed" and x,
                          timeout=RUN_S + 8, what="activation completed")
        assert done["reason"] == "completed"
        run = pump.wait_for(lambda p: p.runs and p.runs[0]["off"] is not None and p.runs[0], what="pump off")
        held = run["off"] - run["on"]
        assert RUN_S - 0.5 <= held <= RUN_S + 1.0, f"the pump ran {held:.2f}s for a {RUN_S}s activation"
        assert len(pump.runs) == 1 and run["reason"] in ("command", "timer")

        # (3) The live view saw the run from request to end, and REST shows the end.
        last, before = recv_until(ws, lambda m: m["type"] == "device.state" and m["device_id"] == a
                                  and m["state"] == "off")
        ws.close()
        events = [e for e in before + [last] if e.get("device_id") == a]
        assert [e["state"] for e in events if e["type"] == "activation"] == ["queued", "starting", "running",
                                                                               "completed"]
        states = [e["state"] for e in events if e["type"] == "device.state"]
        assert states[:2] == ["starting", "on"] and states[-1] == "off"  # "stopping" between: the server's OFF first
        assert device(user, a)["state"] == "off" and device(user, b)["state"] == "offline"
    finally:
        world.close()


# Slow: the node's first boot alone takes 10-15 s here (3-6 s of it the MQTT plugin's wait for
# cluster peers); make test-cluster and .ci/run run it, make test runs only the control.
@pytest.mark.slow
@needs_rabbitmq
def test_rabbitmq_retained_state_activation_and_live_view(server_factory, rabbitmq):
    run_scenario(server_factory, rabbitmq.url)


def test_mosquitto_with_mqtt_3_1_1_the_same(server_factory):
    run_scenario(server_factory, MQTT_URL)
