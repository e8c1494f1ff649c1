"""The heart: activation through the real broker to a simulated pump and back."""

import time

from tests.support import wait_until


def test_activation_runs_for_its_duration_and_is_recorded(world):
    device_id = world.device("Field pump")
    pump = world.pump(device_id)
    user = world.user()
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="device off")

    r = user.post("activate", {"device_id": device_id, "duration_s": 2})
    assert r.status_code == 202, r.text
    activation = r.json()["activation"]
    cmd = pump.wait_for(lambda p: p.commands and p.commands[0], what="ON command")
    assert cmd["action"] == "on" and cmd["duration_s"] == 2
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    on_at = time.monotonic()
    # The list shows the run's time as reserved while it goes (one query for every device).
    listed = user.get("devices")
    assert listed.status_code == 200, listed.text
    mine = next(d for d in listed.json()["devices"] if d["id"] == device_id)
    assert 0 < mine["today"]["reserved_s"] <= 2
    pump.wait_for(lambda p: p.state == "off", timeout=6, what="pump off")
    ran = time.monotonic() - on_at
    assert 1.5 < ran < 3.0

    act = wait_until(lambda: (a := user.get(f"activations/{activation['id']}").json())["state"] == "completed" and a,
                     what="activation completed")
    assert act["reason"] == "completed"
    sessions = wait_until(lambda: [s for s in user.get(f"devices/{device_id}/sessions").json()["items"] if s["ended_at"]],
                          what="closed session")
    assert sessions[0]["activation_id"] == activation["id"]
    assert sessions[0]["intended_s"] == 2
    assert 1.5 < sessions[0]["actual_s"] < 3.0
    logs = user.get(f"devices/{device_id}/logs").json()["items"]
    assert [e["event"] for e in reversed(logs)] == ["on", "off"]
