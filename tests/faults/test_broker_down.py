"""The broker goes away for 5 s mid-run: pumps stop on their own timers, the server reconnects,
and afterwards its records agree with what the pumps did.

The broker is a private Mosquitto (the shared one serves other people's tests). The outage
is played once for the module; each test below judges one promise about it.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.conftest import PrivateBroker, World
from tests.faults.conftest import TERMINAL, RecordingPump, all_pages, overruns, start_pump, wait_activation, wait_state
from tests.support import wait_until

OUTAGE_S = 5.0
SLACK_S = 1.0  # a pump stops on its own timer; this covers scheduling noise on a busy machine
SHORT_S, LONG_S = 2, 10  # Short ends during the outage, Long outlasts it and the reconnect


@dataclasses.dataclass
class Outage:
    pumps: dict[int, RecordingPump]
    short: dict
    long: dict
    late: tuple  # (status, body) of an activation asked for while the broker was away
    health: list
    alive_during: bool
    reconnect_s: float
    activations: dict[int, dict]
    devices: dict[int, dict]
    sessions: dict[int, list]
    runs: dict[int, list]  # each pump's runs when the sessions were read
    again: dict  # a run asked for after the outage
    alive_after: bool


@pytest.fixture(scope="module")
def outage(server_factory) -> Outage:
    broker = PrivateBroker()
    broker.start()
    server = server_factory(PUMPLINK_MQTT_URL=broker.url)
    world = World(server)
    try:
        user = world.user()
        short_id, long_id, late_id = world.device("Short"), world.device("Long"), world.device("Late")
        pumps = {d: start_pump(world, d, broker.url) for d in (short_id, long_id, late_id)}
        for d in pumps:
            wait_state(user, d, "off")
        short = user.post("activate", {"device_id": short_id, "duration_s": SHORT_S})
        long = user.post("activate", {"device_id": long_id, "duration_s": LONG_S})
        assert short.status_code == 202 and long.status_code == 202, (short.text, long.text)
        short, long = short.json()["activation"], long.json()["activation"]
        for a in (short, long):
            wait_activation(user, a["id"], "running")  # mid-run: the server heard both acks

        broker.stop()
        down_at = time.monotonic()
        wait_until(lambda: server.api().get("ready").json()["checks"]["broker"] == "down", timeout=5,
                   what="/ready reports the broker down")
        r = user.post("activate", {"device_id": late_id, "duration_s": 1})
        late = (r.status_code, r.json())
        health = []
        while time.monotonic() < down_at + OUTAGE_S:
            health.append(server.api().get("health").status_code)
            time.sleep(0.2)  # the outage lasts its length whatever the server does
        alive_during = server.proc.poll() is None
        broker.start()
        up_at = time.monotonic()
        wait_until(lambda: server.api().get("ready").status_code == 200, timeout=40, what="server reconnected")
        reconnect_s = time.monotonic() - up_at
        for pump in pumps.values():
            assert pump.connected.wait(10), f"pump {pump.device_id} did not reconnect"

        pumps[long_id].wait_for(lambda p: p.state == "off", timeout=LONG_S + 2, what="the long run ends")
        for aid in [short["id"], long["id"]] + ([late[1]["activation"]["id"]] if late[0] == 202 else []):
            wait_activation(user, aid, TERMINAL, timeout=15)
        devices = {}
        for d in pumps:
            try:
                devices[d] = wait_state(user, d, "off", timeout=10)
            except AssertionError:
                devices[d] = user.get(f"devices/{d}").json()
        r = user.post("activate", {"device_id": short_id, "duration_s": 1})
        again = wait_activation(user, r.json()["activation"]["id"], TERMINAL) if r.status_code == 202 else r.json()
        wait_state(user, short_id, "off")
        activations = {a["id"]: a for a in all_pages(world.admin, "activations")}
        sessions = {d: sorted(all_pages(user, f"devices/{d}/sessions"), key=lambda s: s["started_at"])
                    for d in pumps}
        runs = {d: [dict(run) for run in pump.runs] for d, pump in pumps.items()}
        yield Outage(pumps=pumps, short=short, long=long, late=late, health=health, alive_during=alive_during,
                     reconnect_s=reconnect_s, activations=activations, devices=devices, sessions=sessions,
                     runs=runs, again=again, alive_after=server.proc.poll() is None)
    finally:
        world.close()
        server.stop()
        broker.stop()


def test_the_server_reconnects_by_itself_and_never_crashes(outage):
    assert outage.alive_during and outage.alive_after, "the server process died"
    assert set(outage.health) == {200}, "liveness does not depend on the broker"
    assert (outage.again.get("state"), outage.again.get("reason")) == ("completed", "completed"), outage.again
    print(f"broker outage {OUTAGE_S:.0f}s: the server reconnected {outage.reconnect_s:.2f}s after the broker returned")


def test_runs_end_on_time_by_the_pumps_own_timers(outage):
    durations = {aid: a["duration_s"] for aid, a in outage.activations.items()}
    problems = [p for pump in outage.pumps.values() for p in overruns(pump, durations, SLACK_S)]
    assert problems == []
    for a in (outage.short, outage.long):
        done = outage.activations[a["id"]]
        assert (done["state"], done["reason"]) == ("completed", "completed"), done
    status, body = outage.late
    if status == 202:
        done = outage.activations[body["activation"]["id"]]
        assert done["state"] in TERMINAL and done["reason"], done
    else:
        assert status in (409, 503) and {"error", "code"} <= set(body), body
    assert all(a["state"] in TERMINAL and a["reason"] for a in outage.activations.values()), outage.activations


def test_the_records_agree_with_the_pumps_afterwards(outage):
    problems = []
    for d, pump in outage.pumps.items():
        view = outage.devices[d]
        if view["state"] != pump.state or view["running"] is not None:
            problems.append(f"device {d} shows {view['state']} (running {view['running']}); its pump is {pump.state}")
        sessions, runs = outage.sessions[d], outage.runs[d]
        if len(sessions) != len(runs) or not all(s["ended_at"] for s in sessions):
            problems.append(f"device {d}: sessions {sessions}, but the pump's runs were {runs}")
    assert problems == []


def test_session_lengths_agree_with_the_pumps(outage):
    problems = []
    for d in outage.pumps:
        for s, run in zip(outage.sessions[d], outage.runs[d]):
            ran = run["off"] - run["on"]
            if s["actual_s"] is None or abs(s["actual_s"] - ran) >= 1.0:
                problems.append(f"device {d}: session {s['id']} says {s['actual_s']}s ({s['end_reason']}), "
                                f"the pump ran {ran:.2f}s")
    assert problems == [], "the quota counts the sessions' lengths as time the pump was on"
