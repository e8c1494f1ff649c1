"""Device safety under faulty pumps and hostile use (issue 10): an owed OFF is kept and re-sent
(also across a server crash) and holds the queue; flapping controllers; one user's quota across
devices at once; the minimum run; one legacy device; a revoked user's queue."""

from __future__ import annotations

import secrets
import threading
import time

import pytest

from tests.conftest import World
from tests.e2e.test_pumps import activation, ended, ready_pump, state_of
from tests.support import wait_until

LEGACY_SLACK_S = 2.0  # a legacy pump never runs longer than this past its end


def offs(pump) -> int:
    return sum(1 for c in pump.commands if c["action"] == "off")


def ons(pump) -> int:
    return sum(1 for c in pump.commands if c["action"] == "on")


def delete_device(world, device_id):
    r = world.admin.delete(f"devices/{device_id}")
    assert r.status_code in (200, 404), r.text


# --- findings 4 and 16: the owed OFF ------------------------------------------------------------
def test_legacy_pump_that_lost_its_off_is_stopped_after_a_server_crash(server_factory):
    """The pump misses the first OFF; the server dies while that OFF is owed; once it is back it
    sends the OFF again and the pump stops. The record says how long it really ran."""
    # Re-sends 3 s apart: the crash surely comes before the server's own second OFF.
    server = server_factory(PUMPLINK_ACK_TIMEOUT_S="3")
    world = World(server)
    try:
        device_id = world.device("Old well", protocol="legacy")
        pump = world.pump(device_id, legacy=True, ignore_offs=1)
        user = world.user()
        r = user.post("activate", {"device_id": device_id, "duration_s": 2})
        assert r.status_code == 202, r.text
        act_id = r.json()["activation"]["id"]
        pump.wait_for(lambda p: p.state == "on", what="legacy pump on")
        wait_until(lambda: activation(user, act_id)["state"] == "running", what="run confirmed")
        pump.wait_for(lambda p: offs(p) == 1, timeout=4, what="the first OFF (lost)")
        server.kill()  # the OFF is owed and was not re-sent yet
        assert pump.state == "on", "the lost OFF left the pump running"
        killed_at = time.monotonic()
        server.start()
        back_at = time.monotonic()

        pump.wait_for(lambda p: p.state == "off", timeout=5, what="pump stopped after the restart")
        run = pump.runs[0]
        past_end = run["off"] - (run["on"] + 2)
        outage = back_at - killed_at
        print(f"legacy pump ran {past_end:.2f} s past its end; the server was down {outage:.2f} s; "
              f"OFF {run['off'] - back_at:.2f} s after /health answered again")
        # Nothing can stop a legacy pump while no server runs; once it is back, the owed OFF goes at once.
        assert run["off"] - back_at <= LEGACY_SLACK_S
        assert past_end <= outage + LEGACY_SLACK_S
        assert offs(pump) == 2, "one OFF lost, one after the restart"

        a = activation(user, act_id)
        assert a["state"] == "completed"
        device = wait_until(lambda: (d := user.get(f"devices/{device_id}").json())["state"] == "off" and d,
                            what="device off and the debt paid")
        assert device["off_owed"] is False
        session = user.get(f"devices/{device_id}/sessions").json()["items"][0]
        assert session["activation_id"] == act_id and session["ended_at"], session
        # Honest: the session lasted as long as the pump really ran, not the 2 s that were asked.
        assert session["actual_s"] >= 2 + past_end - 0.5, (session, past_end)
    finally:
        world.close()
        server.stop()


def test_legacy_pump_that_ignores_offs_gets_them_until_it_stops_and_its_session_stays_open(world):
    device_id = world.device("Deaf pump", protocol="legacy")
    try:
        pump = world.pump(device_id, legacy=True, ignore_offs=5)
        user = world.user()
        r = user.post("activate", {"device_id": device_id, "duration_s": 1})
        act_id = r.json()["activation"]["id"]
        pump.wait_for(lambda p: p.state == "on", what="legacy pump on")
        # One round (1 + 2 retries) goes unanswered: the device owes its OFF, visibly.
        d = wait_until(lambda: (x := world.admin.get(f"devices/{device_id}").json())["off_owed"] and x,
                       timeout=6, what="OFF owed")
        assert pump.state == "on"
        session = user.get(f"devices/{device_id}/sessions").json()["items"][0]
        assert session["ended_at"] is None, "the pump may still run: its session is not closed"
        assert d["today"]["used_s"] > 1.5, "the time it keeps running counts"
        r = user.post("activate", {"device_id": device_id, "duration_s": 1})
        assert r.status_code == 409 and r.json()["code"] == "off_unconfirmed", r.text
        assert "OFF" in r.json()["error"]

        # Round 2 starts a second after round 1 gave up; its third send is obeyed.
        pump.wait_for(lambda p: p.state == "off", timeout=10, what="the re-sent OFF lands")
        assert offs(pump) == 6
        wait_until(lambda: not world.admin.get(f"devices/{device_id}").json()["off_owed"], what="debt paid")
        session = wait_until(lambda: (s := user.get(f"devices/{device_id}/sessions").json()["items"][0])["ended_at"]
                             and s, what="session closed")
        run = pump.runs[0]
        assert abs(session["actual_s"] - (run["off"] - run["on"])) < 1.0, (session, run)
        assert activation(user, act_id)["state"] == "completed"
        r = user.post("activate", {"device_id": device_id, "duration_s": 1})
        assert r.status_code == 202, "once it confirmed, it runs again"
        ended(user, r.json()["activation"]["id"])
    finally:
        delete_device(world, device_id)


def test_a_refused_off_holds_the_queue_until_the_pump_confirms_one(world):
    """Finding 16: the relay is stuck, the pump refuses OFF; nothing queued starts meanwhile."""
    device_id, pump = ready_pump(world, refuse_offs=3)
    user = world.user()
    first = user.post("activate", {"device_id": device_id, "duration_s": 30}).json()["activation"]["id"]
    queued = user.post("activate", {"device_id": device_id, "duration_s": 1}).json()["activation"]["id"]
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    wait_until(lambda: activation(user, first)["state"] == "running", what="first running")
    assert user.delete(f"activations/{first}").status_code == 200
    # Refused at once, and again when re-sent 1 s and 2 s later: the pump stays on meanwhile.
    wait_until(lambda: world.admin.get(f"devices/{device_id}").json()["off_owed"], what="OFF owed")
    r = user.post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 409 and r.json()["code"] == "off_unconfirmed", r.text
    assert activation(user, queued)["state"] == "queued"
    pump.wait_for(lambda p: p.state == "off", timeout=12, what="the fourth OFF is obeyed")
    assert ended(user, queued)["state"] == "completed", "the queue moves once the pump confirmed OFF"
    on_cmds = [c for c in pump.commands if c["action"] == "on"]
    assert len(on_cmds) == 2
    assert on_cmds[1]["at"] >= pump.runs[0]["off"], "no ON while the pump had not confirmed its OFF"
    assert not world.admin.get(f"devices/{device_id}").json()["off_owed"]


# --- finding 17: one user's quota across devices ------------------------------------------------
def test_simultaneous_requests_on_two_devices_never_overshoot_a_users_quota(world):
    (a, _), (b, _) = ready_pump(world), ready_pump(world)
    rounds = 6
    for n in range(rounds):
        user = world.user()
        # 1.5 s a day: one 1 s run fits, two do not.
        assert world.admin.patch(f"users/{user.user_id}", {"daily_quota_minutes": 0.025}).status_code == 200
        barrier = threading.Barrier(2)
        answers = {}

        def ask(device_id):
            barrier.wait()
            answers[device_id] = user.post("activate", {"device_id": device_id, "duration_s": 1})

        threads = [threading.Thread(target=ask, args=(d,)) for d in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        codes = sorted(r.status_code for r in answers.values())
        assert codes == [202, 429], f"round {n}: {[(r.status_code, r.text) for r in answers.values()]}"
        refused = next(r for r in answers.values() if r.status_code == 429)
        assert refused.json()["code"] == "quota_exhausted" and refused.json()["quota"] == "user"
        accepted = next(r for r in answers.values() if r.status_code == 202).json()["activation"]["id"]
        user.delete(f"activations/{accepted}")  # keep both pumps free for the next round


# --- minimum run length, the one run-length check ----------------------------------------------
@pytest.fixture(scope="module")
def strict_world(server_factory, expo):
    server = server_factory(PUMPLINK_MIN_RUN_S="5", PUMPLINK_MANUAL_RUNS_PER_HOUR="3",
                            PUMPLINK_PUSH_ENABLED="true", PUMPLINK_EXPO_URL=expo.url)
    w = World(server)
    yield w
    w.close()


def test_runs_shorter_than_the_minimum_are_refused_clearly(strict_world):
    device_id, pump = ready_pump(strict_world, max_run_minutes=1)
    user = strict_world.user()
    for body in ({"duration_s": 4}, {"duration_s": 0.4}, {"duration": 0.05}):
        r = user.post("activate", {"device_id": device_id, **body})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "duration_below_min_run" and r.json()["min_run_s"] == 5
        assert "at least 5 s" in r.json()["error"]
    r = user.post("activate", {"device_id": device_id, "duration": 2})
    assert r.status_code == 422 and r.json()["code"] == "duration_above_max_run"
    assert ons(pump) == 0, "nothing refused reached the pump"
    r = user.post("activate", {"device_id": device_id, "duration_s": 5})
    assert r.status_code == 202, r.text
    user.delete(f"activations/{r.json()['activation']['id']}")


# --- finding 15: controller-started runs --------------------------------------------------------
def test_a_flapping_controller_is_flagged_once_and_no_longer_pushed_run_by_run(strict_world, expo):
    w = strict_world
    device_id, pump = ready_pump(w)
    user = w.user()
    admin_token, user_token = (f"ExponentPushToken[{secrets.token_urlsafe(12)}]" for _ in range(2))
    assert w.admin.post("register-push-token", {"token": admin_token}).status_code in (200, 201)
    assert user.post("register-push-token", {"token": user_token}).status_code in (200, 201)

    def sessions():
        return w.admin.get(f"devices/{device_id}/sessions").json()["items"]

    pairs = 6
    for n in range(1, pairs + 1):
        pump.manual("on")
        wait_until(lambda: len(sessions()) == n and state_of(w.admin, device_id) == "on", what=f"manual ON {n}")
        pump.manual("off")
        wait_until(lambda: sessions()[0]["ended_at"], what=f"manual OFF {n}")

    # Every run is on record, with its own session and log lines.
    assert len(sessions()) == pairs and all(s["start_cause"] == "manual" for s in sessions())
    logs = w.admin.get(f"devices/{device_id}/logs").json()["items"]
    assert len([e for e in logs if e["event"] == "on"]) == pairs
    device = w.admin.get(f"devices/{device_id}").json()
    assert device["flapping"] is True

    flapping = expo.wait_for(lambda f: [m for m in f.messages if (m.get("data") or {}).get("kind") == "device_flapping"
                                        and m["data"]["device_id"] == device_id],
                             what="the flapping alert")
    assert [m["to"] for m in flapping] == [admin_token], "one alert, to admins only"
    assert "flapping" in flapping[0]["body"] or "switched on" in flapping[0]["body"]
    # An activation by a user is still announced: the limit is on controller-started runs. Its
    # push also comes after any the notifier had for the manual runs (it sends in order).
    r = user.post("activate", {"device_id": device_id, "duration_s": 5})
    assert r.status_code == 202, r.text
    key = f"device_on:activation:{r.json()['activation']['id']}"
    expo.wait_for(lambda f: len(f.for_event(key)) == 2, what="the ON push of a requested run")
    user.delete(f"activations/{r.json()['activation']['id']}")
    manual_pushes = [m for m in expo.messages if (m.get("data") or {}).get("event", "").startswith("device_on:session:")
                     and m["data"]["device_id"] == device_id]
    # The first three runs are within the limit and pushed to both; none after that.
    assert len({m["data"]["event"] for m in manual_pushes}) == 3, manual_pushes
    assert sorted(m["to"] for m in manual_pushes) == sorted([admin_token, user_token] * 3)


# --- finding 19: one legacy device ---------------------------------------------------------------
def test_only_one_live_legacy_device_because_they_share_one_control_topic(world):
    admin = world.admin
    first = world.device("Legacy one", protocol="legacy")
    other = None
    try:
        r = admin.post("devices", {"name": "Legacy two", "protocol": "legacy"})
        assert r.status_code == 409 and r.json()["code"] == "legacy_device_exists", r.text
        assert r.json()["device_id"] == first and "control" in r.json()["error"]
        other = world.device("Modern")
        r = admin.patch(f"devices/{other}", {"protocol": "legacy"})
        assert r.status_code == 409 and r.json()["code"] == "legacy_device_exists"
        assert admin.get(f"devices/{other}").json()["protocol"] == "pumplink"
        r = admin.patch(f"devices/{first}", {"protocol": "legacy", "name": "Legacy renamed"})
        assert r.status_code == 200 and r.json()["name"] == "Legacy renamed"
        delete_device(world, first)
        r = admin.patch(f"devices/{other}", {"protocol": "legacy"})
        assert r.status_code == 200 and r.json()["protocol"] == "legacy", "once the first is gone"
    finally:
        delete_device(world, first)
        if other is not None:
            delete_device(world, other)


# --- finding 7: a revoked user's queue ------------------------------------------------------------
def test_a_demoted_users_queued_activations_are_cancelled(world):
    device_id, pump = ready_pump(world)
    owner, other = world.user(), world.user()
    running = other.post("activate", {"device_id": device_id, "duration_s": 3}).json()["activation"]["id"]
    queued = owner.post("activate", {"device_id": device_id, "duration_s": 1}).json()["activation"]["id"]
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    assert world.admin.patch(f"users/{owner.user_id}", {"role": "pending"}).status_code == 200
    a = wait_until(lambda: (x := activation(world.admin, queued))["state"] == "cancelled" and x, timeout=3,
                   what="queued activation cancelled")
    assert a["reason"] == "owner_revoked"
    assert ended(other, running)["state"] == "completed", "another user's run is untouched"
    assert ons(pump) == 1


def test_legacy_run_that_ends_while_the_server_is_down_is_stopped_at_restart_and_counted_in_full(server_factory):
    """No server, no OFF: a legacy pump runs on. After the restart it gets its OFF at once, and
    its session says how long it really ran, not the time that was asked for."""
    server = server_factory()
    world = World(server)
    try:
        device_id = world.device("Old canal", protocol="legacy")
        pump = world.pump(device_id, legacy=True)
        user = world.user()
        act_id = user.post("activate", {"device_id": device_id, "duration_s": 1}).json()["activation"]["id"]
        wait_until(lambda: activation(user, act_id)["state"] == "running", what="run confirmed")
        server.kill()
        run = pump.runs[0]
        # The run's end passes while no server is there (waiting on the clock, not on an event).
        time.sleep(max(0.0, run["on"] + 1.5 - time.monotonic()))
        assert pump.state == "on" and offs(pump) == 0
        server.start()
        back_at = time.monotonic()
        pump.wait_for(lambda p: p.state == "off", timeout=5, what="OFF after the restart")
        assert run["off"] - back_at <= LEGACY_SLACK_S
        a = activation(user, act_id)
        assert (a["state"], a["reason"]) == ("completed", "recovered")
        session = wait_until(lambda: (s := user.get(f"devices/{device_id}/sessions").json()["items"][0])["ended_at"]
                             and s, what="session closed once the pump confirmed OFF")
        assert session["activation_id"] == act_id
        assert abs(session["actual_s"] - (run["off"] - run["on"])) < 1.0, (session, run)
        assert not user.get(f"devices/{device_id}").json()["off_owed"]
    finally:
        world.close()
        server.stop()


def test_a_deleted_users_queued_activations_are_cancelled(world):
    device_id, pump = ready_pump(world)
    owner, other = world.user(), world.user()
    running = other.post("activate", {"device_id": device_id, "duration_s": 3}).json()["activation"]["id"]
    queued = owner.post("activate", {"device_id": device_id, "duration_s": 1}).json()["activation"]["id"]
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    assert world.admin.delete(f"users/{owner.user_id}").status_code == 200
    a = wait_until(lambda: (x := activation(world.admin, queued))["state"] == "cancelled" and x, timeout=3,
                   what="queued activation cancelled")
    assert a["reason"] == "owner_revoked" and a["user_id"] is None
    assert ended(other, running)["state"] == "completed", "another user's run is untouched"
    assert ons(pump) == 1
