"""A fleet that was online before the server started: every retained snapshot reaches it.

Mosquitto keeps at most 1,020 queued messages for one client (its stock settings); a fleet's
retained state and availability, asked for by wildcard at once, used to lose the rest.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import paho.mqtt.client as mqtt
import psycopg2
import psycopg2.extras

from tests.conftest import World
from tests.e2e.test_metrics import metric
from tests.support import MQTT_URL, wait_until

PUMPS = 700  # 1,400 retained messages: more than the broker's 1,020 per client at once


def _insert_devices(url: str, count: int) -> list[int]:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            ids = psycopg2.extras.execute_values(
                cur, "INSERT INTO device (name, protocol, daily_quota_minutes, max_run_minutes, created_at, site_id) "
                     "VALUES %s RETURNING id", [(f"Fleet pump {n}", "pumplink", None, 60, now) for n in range(count)],
                template="(%s, %s, %s, %s, %s, (SELECT id FROM site WHERE is_default))",
                fetch=True)
    finally:
        conn.close()
    return sorted(i for (i,) in ids)


def _retain(prefix: str, messages: list[tuple[str, bytes]]) -> None:
    host, port = MQTT_URL.split("//")[1].split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(500)
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [client.publish(f"{prefix}/devices/{topic}", payload, qos=1, retain=True) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_every_retained_snapshot_of_a_fleet_online_before_start_up_arrives(server_factory):
    server = server_factory()
    world = World(server)
    server.stop()
    ids = _insert_devices(server.env["PUMPLINK_DATABASE_URL"], PUMPS)
    snapshot = [(f"{d}/availability", b"online") for d in ids] + \
               [(f"{d}/state", json.dumps({"state": "off", "reason": "boot"}).encode()) for d in ids]
    _retain(server.prefix, snapshot)
    try:
        server.start()
        admin = world.admin

        def known():
            devices = admin.get("devices").json()["devices"]
            return [d for d in devices if d["id"] in ids and d["state"] == "off" and d["available"] is True]

        wait_until(lambda: len(known()) == PUMPS, timeout=20, interval=0.2, what="every pump's state known")
        text = server.api().get("/metrics").text
        assert metric(text, "pumplink_mqtt_retained_total", '{kind="state"}') == PUMPS
        assert metric(text, "pumplink_mqtt_retained_total", '{kind="availability"}') == PUMPS
        assert metric(text, "pumplink_mqtt_retained_fetch_pending") == 0
    finally:
        _retain(server.prefix, [(topic, b"") for topic, _ in snapshot])
        world.close()
