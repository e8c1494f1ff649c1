"""Pumps through the real broker: queue, acks, quotas, force shutdown, unexpected reports."""

import json
import time

import paho.mqtt.client as mqtt

from tests.support import MQTT_URL, wait_until


def state_of(api, device_id):
    return api.get(f"devices/{device_id}").json()["state"]


def activation(api, activation_id):
    return api.get(f"activations/{activation_id}").json()


def ended(api, activation_id, timeout=10):
    return wait_until(lambda: (a := activation(api, activation_id))["state"] not in ("queued", "starting", "running") and a,
                      timeout=timeout, what=f"activation {activation_id} to end")


def ready_pump(world, **options):
    device_id = world.device(**{k: options.pop(k) for k in list(options) if k in ("daily_quota_minutes", "max_run_minutes", "protocol")})
    pump = world.pump(device_id, **options)
    wait_until(lambda: state_of(world.admin, device_id) == "off", what="device reported off")
    return device_id, pump


def test_queue_runs_in_order_rejects_past_limit_and_cancels(world):
    device_id, pump = ready_pump(world)
    user = world.user()
    ids = []
    for seconds in (1, 1, 1):
        r = user.post("activate", {"device_id": device_id, "duration_s": seconds})
        assert r.status_code == 202, r.text
        ids.append(r.json()["activation"]["id"])
    # The test server allows two waiting behind the running one.
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 429 and r.json()["code"] == "queue_full"
    assert int(r.headers["Retry-After"]) >= 1

    queue = user.get(f"devices/{device_id}").json()["queue"]
    assert [a["id"] for a in queue] == ids[1:]
    r = user.delete(f"activations/{ids[2]}")
    assert r.status_code == 200 and r.json()["activation"]["state"] == "cancelled"

    for aid in ids[:2]:
        assert ended(user, aid)["state"] == "completed"
    assert activation(user, ids[2])["state"] == "cancelled"
    ons = [c for c in pump.commands if c["action"] == "on"]
    assert [c["duration_s"] for c in ons] == [1, 1], "the cancelled activation never reached the pump"
    runs = pump.wait_for(lambda p: len(p.runs) == 2 and p.runs[1]["off"] and p.runs, what="two runs")
    assert runs[0]["off"] <= runs[1]["on"], "runs on one pump never overlap"


def test_no_ack_resends_same_id_then_fails_with_ack_timeout_and_sends_off(world):
    device_id, pump = ready_pump(world, no_ack=True)
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration_s": 5})
    act = ended(user, r.json()["activation"]["id"], timeout=8)
    assert act["state"] == "failed" and act["reason"] == "ack_timeout"
    ons = [c for c in pump.commands if c["action"] == "on"]
    assert len(ons) == 3 and len({c["id"] for c in ons}) == 1, "one command id, sent 1 + 2 retries times"
    pump.wait_for(lambda p: any(c["action"] == "off" for c in p.commands), what="safety OFF")


def test_slow_ack_within_timeout_still_runs(world):
    device_id, pump = ready_pump(world, ack_delay=0.5)
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    act = ended(user, r.json()["activation"]["id"])
    assert act["state"] == "completed"


def test_refused_on_fails_the_activation(world):
    device_id, pump = ready_pump(world, refuse="low water level")
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    act = ended(user, r.json()["activation"]["id"])
    assert act["state"] == "failed" and act["reason"] == "device_refused"
    assert pump.state == "off"


def test_quota_rejects_with_time_left_and_counts_real_on_time(world):
    device_id, pump = ready_pump(world, daily_quota_minutes=0.05)  # 3 seconds a day
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration_s": 2})
    assert r.status_code == 202
    r = user.post("activate", {"device_id": device_id, "duration_s": 2})
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["code"] == "quota_exhausted" and 0.9 <= body["left_s"] <= 1.1
    assert "minutes are left" in body["error"] and int(r.headers["Retry-After"]) > 0
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 202, "what is left still fits"
    ended(user, r.json()["activation"]["id"])
    today = user.get(f"devices/{device_id}").json()["today"]
    assert 2.5 <= today["used_s"] <= 3.5 and today["left_minutes"] < 0.01


def test_duration_and_device_validation(world):
    device_id, _ = ready_pump(world, max_run_minutes=1)
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration": 2})
    assert r.status_code == 422 and r.json()["code"] == "duration_above_max_run"
    r = user.post("activate", {"device_id": device_id, "duration": 0})
    assert r.status_code == 422
    r = user.post("activate", {"device_id": device_id, "duration": "ten"})
    assert r.status_code == 400
    r = user.post("activate", {"device_id": 999999, "duration": 1})
    assert r.status_code == 404 and r.json()["code"] == "device_not_found"


def test_offline_device_refuses_new_activations(world):
    device_id, pump = ready_pump(world)
    pump.power_loss()
    wait_until(lambda: state_of(world.admin, device_id) == "offline", what="LWT offline")
    r = world.user().post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 409 and r.json()["code"] == "device_offline"


def test_force_shutdown_mid_run_and_idle(world):
    device_id, pump = ready_pump(world)
    user = world.user()
    running = user.post("activate", {"device_id": device_id, "duration_s": 30}).json()["activation"]["id"]
    queued = user.post("activate", {"device_id": device_id, "duration_s": 5}).json()["activation"]["id"]
    pump.wait_for(lambda p: p.state == "on", what="pump on")

    r = user.post(f"device/{device_id}/force-shutdown")
    assert r.status_code == 403 and "error" in r.json()
    r = world.admin.post(f"device/{device_id}/force-shutdown", {})
    assert r.status_code == 200 and "message" in r.json()
    pump.wait_for(lambda p: p.state == "off", timeout=3, what="pump off after force")
    a = activation(user, running)
    assert (a["state"], a["reason"]) == ("stopped", "force") and a["ended_by"].startswith("admin:")
    assert activation(user, queued)["state"] == "cancelled"
    audit = world.admin.get("audit").json()["items"]
    assert any(e["action"] == "device.force_shutdown" and e["target"] == f"device:{device_id}" for e in audit)
    wait_until(lambda: state_of(user, device_id) == "off", what="device off")

    offs = len([c for c in pump.commands if c["action"] == "off"])
    r = world.admin.post(f"device/{device_id}/force-shutdown", {})
    assert r.status_code == 200
    pump.wait_for(lambda p: len([c for c in p.commands if c["action"] == "off"]) == offs + 1,
                  what="OFF sent with nothing running")


def test_emergency_stop_stops_every_pump(world):
    pumps = [ready_pump(world) for _ in range(3)]
    user = world.user()
    for device_id, _ in pumps:
        assert user.post("activate", {"device_id": device_id, "duration_s": 30}).status_code == 202
    for _, pump in pumps:
        pump.wait_for(lambda p: p.state == "on", what="pump on")
    r = world.admin.post("admin/emergency-stop", {})
    assert r.status_code == 200
    for _, pump in pumps:
        pump.wait_for(lambda p: p.state == "off", timeout=3, what="pump off after emergency stop")


def test_manual_on_opens_userless_session_and_timer_off_closes_it(world):
    device_id, pump = ready_pump(world)
    pump.manual("on")
    wait_until(lambda: state_of(world.admin, device_id) == "on", what="device on")
    s = world.admin.get(f"devices/{device_id}/sessions").json()["items"][0]
    assert s["user_id"] is None and s["activation_id"] is None and s["start_cause"] == "manual" and s["ended_at"] is None
    pump._switch("off", "timer")
    wait_until(lambda: state_of(world.admin, device_id) == "off", what="device off")
    s = world.admin.get(f"devices/{device_id}/sessions").json()["items"][0]
    assert s["end_reason"] == "timer" and s["actual_s"] >= 0
    causes = [(e["event"], e["cause"]) for e in world.admin.get(f"devices/{device_id}/logs").json()["items"]]
    assert causes[:2] == [("off", "timer"), ("on", "manual")]


def test_a_run_acked_while_the_pump_runs_by_hand_supersedes_its_session(world):
    """The ack closes the pump's own session and opens the run's in one group commit: both land
    (the close first: one open session per device), and the run ends at its time."""
    device_id, pump = ready_pump(world)
    pump.manual("on")
    wait_until(lambda: state_of(world.admin, device_id) == "on", what="device on by hand")
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 202, r.text
    assert ended(user, r.json()["activation"]["id"])["state"] == "completed"
    pump.wait_for(lambda p: p.state == "off", timeout=3, what="the pump off at the run's end")
    sessions = world.admin.get(f"devices/{device_id}/sessions").json()["items"]
    assert len(sessions) == 2, sessions
    run, manual = sessions
    assert (manual["start_cause"], manual["end_reason"], manual["activation_id"]) == ("manual", "superseded", None)
    assert run["activation_id"] == r.json()["activation"]["id"] and run["ended_at"] is not None


def test_malformed_payloads_are_dropped_and_the_device_lives(world):
    device_id, pump = ready_pump(world)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", int(MQTT_URL.rsplit(":", 1)[1]))
    client.loop_start()
    base = f"{world.server.prefix}/devices/{device_id}"
    junk = [b"", b"{", b"null", b"[1,2]", b"\xff\xfe", b'{"state": "sideways"}', b'{"id": 5, "ok": "yes"}',
            json.dumps({"state": "on", "remaining_s": "lots"}).encode(), b"maybe"]
    for kind in ("ack", "state", "availability"):
        for payload in junk:
            client.publish(f"{base}/{kind}", payload, qos=1).wait_for_publish(2)
    client.publish(f"{world.server.legacy_base}/{device_id}/status", b"sideways", qos=1).wait_for_publish(2)
    client.loop_stop()
    client.disconnect()
    # The actor still works: a run goes through normally afterwards.
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 202
    assert ended(user, r.json()["activation"]["id"])["state"] == "completed"
    pump.clear_retained()


def test_legacy_controller_is_driven_by_plain_text(world):
    device_id = world.device("Old pump", protocol="legacy")
    try:
        pump = world.pump(device_id, legacy=True)
        user = world.user()
        r = user.post("activate", {"device_id": device_id, "duration_s": 1})
        assert r.status_code == 202
        pump.wait_for(lambda p: p.state == "on", what="legacy pump on")
        t0 = time.monotonic()
        pump.wait_for(lambda p: p.state == "off", timeout=4, what="server switched legacy pump off")
        assert time.monotonic() - t0 < 2.5
        assert [c["action"] for c in pump.commands] == ["on", "off"]
        assert ended(user, r.json()["activation"]["id"])["state"] == "completed"
    finally:
        # One live legacy device per server (they share one control topic): leave room for the next test.
        world.admin.delete(f"devices/{device_id}")


def test_go_shaped_status_and_device_crud(world):
    device_id, pump = ready_pump(world)
    user = world.user()
    r = user.post("activate", {"device_id": device_id, "duration": 0.5})
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    status = wait_until(lambda: (s := user.get(f"device/{device_id}/status").json())["status"] == "on" and s,
                        what="status on")
    assert set(status) == {"device_id", "status", "active_until", "intended_duration", "session_id"}
    assert status["intended_duration"] == 0.5 and status["active_until"] and status["session_id"]

    r = world.admin.patch(f"devices/{device_id}", {"name": "Renamed", "max_run_minutes": 5})
    assert r.status_code == 200 and r.json()["name"] == "Renamed"
    r = user.patch(f"devices/{device_id}", {"name": "x"})
    assert r.status_code == 403
    r = world.admin.delete(f"devices/{device_id}")
    assert r.status_code == 200
    pump.wait_for(lambda p: p.state == "off", timeout=3, what="deleted device sent OFF")
    assert user.get(f"devices/{device_id}").status_code == 404


def test_a_users_own_quota_spans_devices(world):
    (a, _), (b, _) = ready_pump(world), ready_pump(world)
    user = world.user()
    assert world.admin.patch(f"users/{user.user_id}", {"daily_quota_minutes": 0.05}).status_code == 200  # 3 s
    assert user.post("activate", {"device_id": a, "duration_s": 2}).status_code == 202
    r = user.post("activate", {"device_id": b, "duration_s": 2})
    assert r.status_code == 429, r.text
    assert r.json()["quota"] == "user" and 0.9 <= r.json()["left_s"] <= 1.1
    # Lifting it applies to the very next request.
    assert world.admin.patch(f"users/{user.user_id}", {"daily_quota_minutes": None}).status_code == 200
    assert user.post("activate", {"device_id": b, "duration_s": 2}).status_code == 202
