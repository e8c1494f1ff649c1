"""Live events between nodes over the broker (``<prefix>/_cluster/events``), with one real node:
it publishes its own events there once, and hands events of other nodes to exactly the WebSocket
clients that may see them."""

from __future__ import annotations

import datetime as dt
import json
import queue
import secrets

import paho.mqtt.client as mqtt
import pytest
import requests

from pumplink.cluster.events import encode, topic
from pumplink.events import ActivationChanged, DeviceStateChanged
from tests.cluster.nodes import running_cluster
from tests.conftest import World
from tests.e2e.test_ws import connect, recv_json, recv_until, ws_url
from tests.support import MQTT_URL, wait_until

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def node(pg_factory, zookeeper, run_tag, log_dir):
    """One node in cluster mode (it owns every partition)."""
    with running_cluster(["node-a"], database=pg_factory(), zookeeper=zookeeper, run_tag=run_tag, log_dir=log_dir,
                         routing=False) as (nodes, _):
        yield nodes[0]


@pytest.fixture
def world(node):
    w = World(node)
    yield w
    w.close()


class Other:
    """Another node, as far as the channel goes: a client on the cluster topic."""

    def __init__(self, prefix: str, url: str = MQTT_URL):
        self.topic = topic(prefix)
        self.heard: queue.Queue = queue.Queue()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = queue.Queue()
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=1)
        self.client.on_message = lambda c, u, msg: self.heard.put(json.loads(msg.payload))
        self.client.connect(host, int(port))
        self.client.loop_start()
        subscribed.get(timeout=5)

    def publish(self, event) -> None:
        self.client.publish(self.topic, encode(event, "node-b/test"), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def other(node):
    o = Other(node.prefix)
    yield o
    o.close()


def json_socket(node, api):
    ws = connect(ws_url(node), token=api.token, timeout=10)
    assert recv_json(ws)["type"] == "snapshot"
    return ws


def private_device(world: World, name: str) -> int:
    r = world.admin.post("sites", {"name": f"Private {secrets.token_hex(3)}"})
    assert r.status_code == 201, r.text
    return world.device(name, site_id=r.json()["id"])


def state_event(device_id: int, state: str, previous: str) -> DeviceStateChanged:
    return DeviceStateChanged(device_id=device_id, state=state, previous=previous, available=True, activation_id=None,
                              reason="manual", at=dt.datetime.now(UTC))


def test_a_node_publishes_its_events_once_and_its_clients_get_each_once(world, other):
    device_id = world.device("Local pump")
    world.pump(device_id)
    user = world.user()
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="device off")
    ws = json_socket(world.server, user)
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 202, r.text
    activation_id = r.json()["activation"]["id"]
    done, before = recv_until(ws, lambda m: m["type"] == "activation" and m["state"] == "completed")
    frames = [f for f in before + [done] if f.get("device_id") == device_id]
    if not any(f["type"] == "device.state" and f["state"] == "off" for f in frames):
        frames.append(recv_until(ws, lambda m: m["type"] == "device.state" and m["device_id"] == device_id)[0])
    # Each change once: the node's own events are not delivered again from the broker.
    changes = [(f["type"], f["state"], f["at"]) for f in frames]
    assert len(changes) == len(set(changes)), changes
    assert [f["state"] for f in frames if f["type"] == "activation"] == ["queued", "starting", "running", "completed"]
    ws.close()
    # The other nodes heard the same events, from node-a.
    heard = []
    wait_until(lambda: heard.extend(iter_queue(other.heard)) or any(
        h["type"] == "ActivationChanged" and h["event"]["activation"]["state"] == "completed"
        and h["event"]["activation"]["id"] == activation_id for h in heard), what="completion heard on the topic")
    assert all(h["from"].startswith("node-a/") for h in heard)
    states = [h["event"]["state"] for h in heard if h["type"] == "DeviceStateChanged"
              and h["event"]["device_id"] == device_id]
    assert states[states.index("starting"):][:2] == ["starting", "on"], states


def iter_queue(q: queue.Queue):
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def test_events_of_another_node_reach_only_the_clients_that_may_see_them(world, other):
    visible = world.device("Shared pump")
    hidden = private_device(world, "Private pump")
    user, admin = world.user(), world.admin
    ws_user, ws_admin = json_socket(world.server, user), json_socket(world.server, admin)
    # Another node's events: the hidden device's state, another user's activation, then the
    # visible device's state. They come in order, so once the user has the last, it would have
    # had the others.
    other.publish(state_event(hidden, "on", "off"))
    other.publish(ActivationChanged(activation={"id": 10_000, "device_id": visible, "user_id": 1, "state": "running"},
                                    at=dt.datetime.now(UTC)))  # user 1, the admin: not this user's
    other.publish(state_event(visible, "on", "off"))
    last, before = recv_until(ws_user, lambda m: m["type"] == "device.state" and m["device_id"] == visible)
    assert last["state"] == "on" and last["reason"] == "manual"
    assert [f for f in before if f.get("device_id") == hidden or f["type"] == "activation"] == []
    metrics = requests.get(world.server.base + "/metrics", timeout=5).text
    assert 'pumplink_cluster_events_total{direction="received"}' in metrics
    # The admin sees all three.
    seen = [recv_until(ws_admin, lambda m: m["type"] in ("device.state", "activation"))[0] for _ in range(3)]
    assert [(f["type"], f["device_id"]) for f in seen] == [("device.state", hidden), ("activation", visible),
                                                            ("device.state", visible)]
    ws_user.close()
    ws_admin.close()


def test_events_of_other_nodes_arrive_again_after_the_broker_restarts(pg_factory, zookeeper, run_tag, log_dir,
                                                                      private_broker):
    with running_cluster(["node-a"], database=pg_factory(), zookeeper=zookeeper, run_tag=run_tag, log_dir=log_dir,
                         routing=False, PUMPLINK_MQTT_URL=private_broker.url) as (nodes, _):
        world = World(nodes[0])
        device_id = world.device("Shared pump")
        user = world.user()
        ws = json_socket(world.server, user)
        other = Other(nodes[0].prefix, private_broker.url)
        other.publish(state_event(device_id, "on", "off"))
        assert recv_until(ws, lambda m: m["type"] == "device.state" and m["device_id"] == device_id)[0]["state"] == "on"
        other.close()
        private_broker.stop()
        private_broker.start()
        # The node's event client reconnects and subscribes again; until then a message is lost,
        # so the other node repeats its event until this node's client shows it.
        other = Other(nodes[0].prefix, private_broker.url)
        try:
            def arrived():
                other.publish(state_event(device_id, "off", "on"))
                try:
                    frame = recv_json(ws)
                except Exception:  # noqa: BLE001 - nothing within the socket's timeout
                    return False
                return frame["type"] == "device.state" and frame["state"] == "off"

            ws.settimeout(0.5)
            wait_until(arrived, timeout=20, interval=0.1, what="another node's event after the broker restart")
        finally:
            other.close()
            ws.close()
