"""Crashes and outages: the server dies, the broker restarts; no pump runs longer than asked."""

import datetime as dt

from pumplink.devices.simulator import SimulatedPump
from tests.conftest import World
from tests.support import wait_until


def iso_to_dt(value):
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_sigkill_mid_run_recovers_each_activation_honestly(server_factory):
    server = server_factory()
    world = World(server)
    try:
        a_id, b_id = world.device("A"), world.device("B")
        pump_a, pump_b = world.pump(a_id), world.pump(b_id)
        user = world.user()
        for d in (a_id, b_id):
            wait_until(lambda: user.get(f"devices/{d}").json()["state"] == "off", what="pumps off")
        act_a = user.post("activate", {"device_id": a_id, "duration_s": 1}).json()["activation"]["id"]
        act_b = user.post("activate", {"device_id": b_id, "duration_s": 5}).json()["activation"]["id"]
        queued_b = user.post("activate", {"device_id": b_id, "duration_s": 1}).json()["activation"]["id"]
        pump_a.wait_for(lambda p: p.state == "on", what="A on")
        pump_b.wait_for(lambda p: p.state == "on", what="B on")
        # Both runs are confirmed in the database before the crash.
        wait_until(lambda: user.get(f"activations/{act_b}").json()["state"] == "running", what="B running")
        wait_until(lambda: user.get(f"activations/{act_a}").json()["state"] == "running", what="A running")

        server.kill()
        # A's run ends while the server is down: only the pump's own timer can stop it.
        pump_a.wait_for(lambda p: p.state == "off", timeout=3, what="A stops itself during the outage")
        offs_before = len([c for c in pump_a.commands if c["action"] == "off"])
        server.start()

        a = wait_until(lambda: (x := user.get(f"activations/{act_a}").json())["state"] == "completed" and x,
                       what="A closed after restart")
        assert a["reason"] in ("recovered", "completed")
        pump_a.wait_for(lambda p: len([c for c in p.commands if c["action"] == "off"]) > offs_before,
                        timeout=5, what="A gets an OFF after restart")
        sessions_a = user.get(f"devices/{a_id}/sessions").json()["items"]
        assert sessions_a and all(s["ended_at"] for s in sessions_a)

        # B keeps running for its remaining time and stops at its original end.
        b_running = user.get(f"activations/{act_b}").json()
        assert b_running["state"] == "running"
        b = wait_until(lambda: (x := user.get(f"activations/{act_b}").json())["state"] == "completed" and x,
                       timeout=8, what="B completed")
        assert abs((iso_to_dt(b["ended_at"]) - iso_to_dt(b["ends_at"])).total_seconds()) < 1.5
        run_b = pump_b.runs[0]
        pump_b.wait_for(lambda p: p.runs[0]["off"] is not None, what="B off")
        assert run_b["off"] - run_b["on"] <= 5 + 1.0, "B never runs longer than asked"
        # The queued one behind B carries on after the restart.
        q = wait_until(lambda: (x := user.get(f"activations/{queued_b}").json())["state"] == "completed" and x,
                       timeout=8, what="queued activation ran after restart")
        assert q["reason"] == "completed"
        for pump in (pump_a, pump_b):
            for run in pump.runs:
                assert run["off"] is not None and run["off"] - run["on"] <= run["duration_s"] + 2
    finally:
        world.close()


def test_broker_restart_mid_run(server_factory, private_broker):
    server = server_factory(PUMPLINK_MQTT_URL=private_broker.url)
    world = World(server)
    try:
        device_id = world.device("Broker test")
        pump = SimulatedPump(private_broker.url, server.prefix, device_id).start()
        world.pumps.append(pump)
        user = world.user()
        wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="pump off")
        act = user.post("activate", {"device_id": device_id, "duration_s": 2}).json()["activation"]["id"]
        pump.wait_for(lambda p: p.state == "on", what="pump on")
        # The server heard the ack: the run is confirmed before the broker goes.
        wait_until(lambda: user.get(f"activations/{act}").json()["state"] == "running", what="run confirmed")

        private_broker.stop()
        wait_until(lambda: server.api().get("ready").status_code == 503, what="/ready reports the broker down")
        # The pump's own timer ends the run while the broker is away.
        pump.wait_for(lambda p: p.state == "off", timeout=4, what="pump stops itself")
        private_broker.start()
        wait_until(lambda: server.api().get("ready").status_code == 200, timeout=40, what="server reconnected")
        pump.connected.wait(10)

        a = wait_until(lambda: (x := user.get(f"activations/{act}").json())["state"] not in ("running", "starting") and x,
                       timeout=15, what="activation ended")
        assert a["state"] == "completed"
        wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", timeout=15,
                   what="records agree with the pump: off")
        assert pump.runs[0]["off"] - pump.runs[0]["on"] <= 2 + 1.0
        # And the service carries on.
        r = user.post("activate", {"device_id": device_id, "duration_s": 1})
        assert r.status_code == 202, r.text
        b = wait_until(lambda: (x := user.get(f"activations/{r.json()['activation']['id']}").json())["state"] == "completed" and x,
                       timeout=10, what="a run after the outage")
        assert b["reason"] == "completed"
        assert server.proc.poll() is None, "the server never crashed"
    finally:
        world.close()
