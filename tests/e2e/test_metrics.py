"""Prometheus metrics reflect what the pumps did."""

import re

from tests.support import wait_until


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels) if labels else ''}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$" if not labels \
        else rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    values = [float(v) for v in re.findall(pattern, text, re.M)]
    return sum(values)


def test_metrics_count_activations_acks_and_the_broker(world):
    device_id = world.device("Metered")
    pump = world.pump(device_id)
    user = world.user()
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="pump off")
    before = world.server.api().get("/metrics").text
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 202
    pump.wait_for(lambda p: p.runs and p.runs[0]["off"], what="run done")
    wait_until(lambda: user.get(f"activations/{r.json()['activation']['id']}").json()["state"] == "completed",
               what="completed")
    # The OFF's ack may still be on its way: the device is "stopping" until the pump confirms it.
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="pump confirmed off")
    resp = world.server.api().get("/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = resp.text
    done = '{reason="completed",state="completed"}'
    assert metric(text, "pumplink_activations_total", done) == metric(before, "pumplink_activations_total", done) + 1
    assert metric(text, "pumplink_command_ack_seconds_count", '{action="on"}') >= 1
    assert metric(text, "pumplink_broker_connected") == 1
    assert metric(text, "pumplink_devices", '{state="off"}') >= 1
    assert "pumplink_scheduler_heap_size" in text and "pumplink_websocket_clients" in text
