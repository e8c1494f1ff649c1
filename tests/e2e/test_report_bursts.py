"""A pump's burst of reports is handled in units (devices/doorbell.py, transactions.py): every
change is still logged, each ON..OFF is one session, and another pump's change gets through."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import World
from tests.e2e.test_metrics import metric
from tests.e2e.test_ws import connect, recv_json, recv_until, subscribe, ws_url
from tests.support import MQTT_URL, wait_until

PAIRS = 200  # 400 reports, published as fast as the broker takes them


@pytest.fixture(scope="module")
def burst_world(server_factory):
    w = World(server_factory(PUMPLINK_MANUAL_RUNS_PER_HOUR="100000"))
    yield w
    w.close()


def publish_burst(topic: str, pairs: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", int(MQTT_URL.rsplit(":", 1)[1]))
    client.loop_start()
    try:
        sent = [client.publish(topic, json.dumps({"state": state, "reason": "manual"}), qos=1)
                for _ in range(pairs) for state in ("on", "off")]
        for info in sent:
            info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def items(api, path: str) -> list[dict]:
    return api.get(path, params={"limit": 500}).json()["items"]


def test_a_burst_is_logged_change_by_change_in_units_and_another_pump_still_gets_through(burst_world):
    w = burst_world
    burst, other = w.device("Burst"), w.device("Other")
    pump_other = w.pump(other)
    wait_until(lambda: w.admin.get(f"devices/{other}").json()["state"] == "off", what="the other pump off")
    ws = connect(ws_url(w.server), token=w.admin.token, timeout=10)
    assert recv_json(ws)["type"] == "snapshot"
    subscribe(ws, [other])
    before = w.server.api().get("/metrics").text

    publish_burst(f"{w.server.prefix}/devices/{burst}/state", PAIRS)
    pump_other.manual("on")
    frame, _ = recv_until(ws, lambda m: m.get("device_id") == other and m.get("state") == "on", limit=50)
    ws.close()
    assert frame["type"] == "device.state"

    wait_until(lambda: len(items(w.admin, f"devices/{burst}/logs")) == 2 * PAIRS, timeout=30, interval=0.2,
               what="every change logged")
    logs = sorted(items(w.admin, f"devices/{burst}/logs"), key=lambda e: e["id"])
    sessions = sorted(items(w.admin, f"devices/{burst}/sessions"), key=lambda s: s["id"])
    assert [e["event"] for e in logs] == ["on", "off"] * PAIRS, "in the order the pump reported them"
    assert len(sessions) == PAIRS and all(s["ended_at"] is not None for s in sessions), "one closed session per ON..OFF"
    assert all((s["start_cause"], s["end_reason"], s["activation_id"]) == ("manual", "manual", None) for s in sessions)
    assert all(a["ended_at"] <= b["started_at"] for a, b in zip(sessions, sessions[1:])), "sessions never overlap"
    assert [e["session_id"] for e in logs[::2]] == [s["id"] for s in sessions], "each ON logged with its session"
    assert w.admin.get(f"devices/{burst}").json()["state"] == "off"

    after = w.server.api().get("/metrics").text
    units = metric(after, "pumplink_device_unit_messages_count") - metric(before, "pumplink_device_unit_messages_count")
    handled = metric(after, "pumplink_device_unit_messages_sum") - metric(before, "pumplink_device_unit_messages_sum")
    assert handled >= 2 * PAIRS + 1  # the burst and the other pump's report, at least
    assert units < handled, "waiting reports were handled together, not one commit each"
