"""Schedules through the real server, broker and simulated pumps: on time, validated, surviving a crash."""

from __future__ import annotations

import datetime as dt
import time

import psycopg2

from tests.conftest import World
from tests.support import wait_until

UTC = dt.timezone.utc
LATENESS_BOUND_S = 1.5  # noisy shared 2-core machine; typical lateness is a few ms


class Timeline:
    """Wall-clock due times as this process's monotonic clock, where pump commands are stamped."""

    def __init__(self):
        self.wall0, self.mono0 = time.time(), time.monotonic()

    def due(self, seconds_ahead: float) -> tuple[str, float]:
        """An ISO start time ``seconds_ahead`` from now, and the same moment on the monotonic clock."""
        wall = time.time() + seconds_ahead
        return dt.datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds"), self.mono0 + (wall - self.wall0)


def on_commands(pump) -> list[dict]:
    return [c for c in pump.commands if c["action"] == "on"]


def ready_pump(world: World, user, name: str = "Scheduled pump", **fields):
    device_id = world.device(name, **fields)
    pump = world.pump(device_id)
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what=f"device {device_id} off")
    return device_id, pump


def schedule(user, device_id: int, start_time: str, path: str = "schedules", **fields) -> dict:
    r = user.post(path, {"device_id": device_id, "start_time": start_time, **fields})
    assert r.status_code == 201, r.text
    return r.json()["schedule"]


def runs_of(user, schedule_id: int) -> list[dict]:
    r = user.get(f"schedules/{schedule_id}")
    assert r.status_code == 200, r.text
    return r.json()["runs"]


def settled_runs(user, schedule_id: int, count: int = 1, timeout: float = 10.0) -> list[dict]:
    return wait_until(
        lambda: (runs := runs_of(user, schedule_id)) and len(runs) >= count
        and all(r["outcome"] != "firing" for r in runs) and runs,
        timeout=timeout, what=f"{count} settled run(s) of schedule {schedule_id}")


def test_twenty_one_off_schedules_on_four_pumps_all_fire_close_to_their_time(world):
    user = world.user()
    devices = [ready_pump(world, user, f"Field {n}") for n in range(4)]
    clock = Timeline()
    expected = {}  # device_id -> [(schedule_id, due on the monotonic clock)] in due order
    for k in range(5):
        for j, (device_id, _) in enumerate(devices):
            # Each pump's runs (1 s) are 1.5 s apart, so none waits in the queue behind another.
            start, due_mono = clock.due(2.5 + 1.5 * k + 0.3 * j)
            s = schedule(user, device_id, start, duration_s=1)
            assert s["next_run_at"] == s["next_runs"][0] and len(s["next_runs"]) == 1
            expected.setdefault(device_id, []).append((s["id"], due_mono))

    lateness = []
    for device_id, pump in devices:
        ons = pump.wait_for(lambda p: len(on_commands(p)) >= 5 and on_commands(p), timeout=20,
                            what="five scheduled ON commands")
        assert len(on_commands(pump)) == 5
        for cmd, (_, due_mono) in zip(ons, expected[device_id]):
            assert cmd["duration_s"] == 1
            lateness.append(cmd["at"] - due_mono)
    print(f"lateness at the pumps: min {min(lateness):.3f}s, max {max(lateness):.3f}s")
    assert min(lateness) > -0.1, f"a run started before its time: {sorted(lateness)[:3]}"
    assert max(lateness) < LATENESS_BOUND_S, f"lateness at the pumps: {sorted(lateness)[-3:]}"

    for device_id, _ in devices:
        for schedule_id, _ in expected[device_id]:
            (run,) = settled_runs(user, schedule_id)
            assert run["outcome"] == "started" and run["activation_id"] is not None
            act = user.get(f"activations/{run['activation_id']}").json()
            assert act["schedule_id"] == schedule_id and act["source"] == "schedule"
    listed = user.get("schedules").json()["items"]
    assert len(listed) == 20 and {s["status"] for s in listed} == {"finished"}


def test_the_apps_post_schedule_with_a_zone_and_minutes_works(world):
    user = world.user()
    device_id, pump = ready_pump(world, user)
    # The app sends a local time with its zone and a duration in minutes.
    due = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    start = due.astimezone(dt.timezone(dt.timedelta(hours=5))).isoformat()
    assert start.endswith("+05:00")
    r = user.post("schedule", {"device_id": device_id, "start_time": start, "duration": 0.02})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["message"]
    s = body["schedule"]
    assert s["start_time"] == due.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert s["duration_s"] == 1 and s["next_runs"] == [s["start_time"]]
    cmd = pump.wait_for(lambda p: on_commands(p) and on_commands(p)[0], timeout=10, what="the app's scheduled ON")
    assert cmd["duration_s"] == 1
    (run,) = settled_runs(user, s["id"])
    assert run["outcome"] == "started" and run["due_at"] == s["start_time"]


def test_a_recurring_rule_fires_each_time_then_finishes(world):
    user = world.user()
    device_id, pump = ready_pump(world, user)
    start, _ = Timeline().due(2)
    s = schedule(user, device_id, start, duration_s=1, rrule="FREQ=SECONDLY;INTERVAL=2;COUNT=3")
    times = [dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in s["next_runs"]]
    assert len(times) == 3 and [(b - a).total_seconds() for a, b in zip(times, times[1:])] == [2.0, 2.0]
    pump.wait_for(lambda p: len(on_commands(p)) >= 3, timeout=15, what="three ON commands")
    runs = settled_runs(user, s["id"], count=3)
    assert [r["outcome"] for r in runs] == ["started"] * 3
    assert sorted(r["due_at"] for r in runs) == s["next_runs"]
    assert all(r["late_s"] < LATENESS_BOUND_S for r in runs)
    done = user.get(f"schedules/{s['id']}").json()
    assert done["status"] == "finished" and done["next_run_at"] is None and done["run_count"] == 3


def test_a_run_over_the_devices_quota_is_recorded_as_rejected(world):
    user = world.user()
    device_id, pump = ready_pump(world, user, daily_quota_minutes=0.01)  # 0.6 s a day
    start, _ = Timeline().due(1)
    s = schedule(user, device_id, start, duration_s=1)
    (run,) = settled_runs(user, s["id"])
    assert run["outcome"] == "rejected: quota" and "quota" in run["detail"] and run["activation_id"] is None
    assert on_commands(pump) == []


def test_a_schedule_whose_device_was_deleted_records_why_and_stops(world):
    user = world.user()
    device_id = world.device("Doomed pump")
    s = schedule(user, device_id, Timeline().due(1.5)[0], duration_s=1, rrule="FREQ=SECONDLY;INTERVAL=2")
    assert world.admin.delete(f"devices/{device_id}").status_code == 200
    (run,) = settled_runs(user, s["id"])
    assert run["outcome"] == "rejected: no device"
    after = user.get(f"schedules/{s['id']}").json()
    assert after["status"] == "disabled" and after["run_count"] == 1


def test_disabled_and_deleted_schedules_do_not_fire_and_others_cannot_touch_them(world):
    owner, stranger = world.user(), world.user()
    device_id, pump = ready_pump(world, owner)
    clock = Timeline()
    disabled = schedule(owner, device_id, clock.due(1.5)[0], duration_s=1)
    deleted = schedule(owner, device_id, clock.due(1.5)[0], duration_s=1)
    sentinel = schedule(owner, device_id, clock.due(2.5)[0], duration_s=1)

    assert stranger.get(f"schedules/{disabled['id']}").status_code == 404
    assert stranger.patch(f"schedules/{disabled['id']}", {"enabled": False}).status_code == 404
    assert stranger.delete(f"schedules/{deleted['id']}").status_code == 404
    assert all(s["user_id"] == stranger.user_id for s in stranger.get("schedules").json()["items"])
    assert {disabled["id"], deleted["id"]} <= {s["id"] for s in world.admin.get("schedules").json()["items"]}

    r = owner.patch(f"schedules/{disabled['id']}", {"enabled": False})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "disabled" and r.json()["next_runs"] == []
    r = owner.delete(f"schedules/{deleted['id']}")
    assert r.status_code == 200, r.text
    assert owner.get(f"schedules/{deleted['id']}").status_code == 404

    # Runs fire in due order: once the later sentinel has fired, the other two would have.
    pump.wait_for(lambda p: on_commands(p), timeout=10, what="the sentinel's ON")
    (run,) = settled_runs(owner, sentinel["id"])
    assert run["outcome"] == "started"
    assert len(on_commands(pump)) == 1
    assert runs_of(owner, disabled["id"]) == []

    # Enabled again after its time: a one-off whose moment passed has nothing left to run.
    r = owner.patch(f"schedules/{disabled['id']}", {"enabled": True})
    assert r.status_code == 200 and r.json()["status"] == "finished" and r.json()["next_run_at"] is None
    assert owner.patch(f"schedules/{disabled['id']}", {"enabled": "yes"}).status_code == 400
    assert owner.patch(f"schedules/{disabled['id']}", {"enabled": True, "rrule": "FREQ=DAILY"}).status_code == 400


def test_bad_schedules_get_clear_errors(world):
    user = world.user()
    device_id = world.device("Validated pump", max_run_minutes=5)
    later = (dt.datetime.now(UTC) + dt.timedelta(hours=1)).isoformat()

    def post(body):
        r = user.post("schedules", body)
        assert set(r.json()) >= {"error", "code"}, r.text
        return r

    ok = {"device_id": device_id, "start_time": later, "duration": 1}
    r = post({**ok, "start_time": (dt.datetime.now(UTC) - dt.timedelta(minutes=5)).isoformat()})
    assert (r.status_code, r.json()["code"]) == (422, "start_in_past")
    r = post({**ok, "rrule": "FREQ=FORTNIGHTLY"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_rrule") and "FORTNIGHTLY" in r.json()["error"]
    r = post({**ok, "rrule": "FREQ=DAILY;UNTIL=20200101T000000Z"})
    assert (r.status_code, r.json()["code"]) == (422, "rule_never_fires")
    r = post({**ok, "duration": 6})
    assert (r.status_code, r.json()["code"]) == (422, "duration_above_max_run")
    r = post({**ok, "duration": 0})
    assert r.status_code == 422
    r = post({**ok, "device_id": 999999})
    assert (r.status_code, r.json()["code"]) == (404, "device_not_found")
    for wrong in ({"device_id": "one"}, {"start_time": 1756130400}, {"duration": "5"}, {"rrule": ["FREQ=DAILY"]}):
        r = post({**ok, **wrong})
        assert r.status_code == 400, (wrong, r.text)
    r = post({**ok, "start_time": "next tuesday"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_start_time")
    r = user.request("POST", "schedules", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"
    pending = world.user(role="pending")
    r = pending.post("schedule", ok)
    assert (r.status_code, r.json()["code"]) == (403, "approval_required")
    r = user.post("schedules", ok, token="not-a-token")
    assert r.status_code == 401
    assert user.get("schedules/abc").status_code == 404 and user.get("schedules/999999").status_code == 404
    # Nothing invalid was stored.
    assert user.get("schedules").json()["items"] == []


def test_schedules_show_their_next_five_runs_in_utc(world):
    user = world.user()
    device_id = world.device("Weekly pump")
    start = (dt.datetime.now(UTC) + dt.timedelta(days=1)).replace(hour=6, minute=0, second=0, microsecond=0)
    s = schedule(user, device_id, start.isoformat(), duration=10, rrule="FREQ=WEEKLY;BYDAY=MO,TH")
    runs = [dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in s["next_runs"]]
    assert len(runs) == 5 and all(t.endswith("Z") for t in s["next_runs"])
    assert {r.strftime("%a") for r in runs} == {"Mon", "Thu"} and all(r.strftime("%H:%M") == "06:00" for r in runs)
    assert runs == sorted(runs) and runs[0] >= start and s["next_run_at"] == s["next_runs"][0]


# --- crashes and restarts: each with its own server and database -------------------------------
def test_schedules_made_before_a_sigkill_fire_after_the_restart(server_factory):
    server = server_factory()
    world = World(server)
    try:
        user = world.user()
        (early_device, early_pump), (late_device, late_pump) = (ready_pump(world, user, "Early"),
                                                                ready_pump(world, user, "Late"))
        clock = Timeline()
        early_start, early_due = clock.due(1.5)  # due while the server is down: fires late, within grace
        late_start, late_due = clock.due(9)  # due after the restart: fires on time from the rebuilt heap
        early = schedule(user, early_device, early_start, duration_s=1)
        late = schedule(user, late_device, late_start, duration_s=1)
        server.kill()
        while time.monotonic() < early_due + 0.5:
            time.sleep(0.05)  # the server is dead: there is nothing to wait on but the clock
        assert on_commands(early_pump) == []
        server.start()

        cmd = early_pump.wait_for(lambda p: on_commands(p) and on_commands(p)[0], timeout=10, what="late ON")
        assert cmd["at"] > early_due + 0.5
        (run,) = settled_runs(user, early["id"])
        assert run["outcome"] == "started" and run["late_s"] > 0.5

        cmd = late_pump.wait_for(lambda p: on_commands(p) and on_commands(p)[0], timeout=15, what="on-time ON")
        assert -0.1 < cmd["at"] - late_due < LATENESS_BOUND_S
        (run,) = settled_runs(user, late["id"])
        assert run["outcome"] == "started"
        assert len(on_commands(early_pump)) == 1 and len(on_commands(late_pump)) == 1
    finally:
        world.close()
        server.stop()


def test_a_run_missed_beyond_the_grace_window_is_recorded_as_missed(server_factory):
    server = server_factory(PUMPLINK_SCHEDULE_GRACE_S=1)
    world = World(server)
    try:
        user = world.user()
        device_id, pump = ready_pump(world, user)
        start, due = Timeline().due(2)
        s = schedule(user, device_id, start, duration_s=1)
        server.kill()
        while time.monotonic() < due + 1 + 1.0:
            time.sleep(0.05)  # the server is dead: past the due time and the 1 s grace window
        server.start()

        (run,) = settled_runs(user, s["id"])
        assert run["outcome"] == "missed" and "grace" in run["detail"] and run["activation_id"] is None
        assert on_commands(pump) == []
        after = user.get(f"schedules/{s['id']}").json()
        assert after["status"] == "finished" and after["next_run_at"] is None
    finally:
        world.close()
        server.stop()


def test_runs_cut_off_by_a_crash_are_settled_after_the_restart_and_not_fired_again(server_factory):
    server = server_factory()
    world = World(server)
    try:
        user = world.user()
        device_id, pump = ready_pump(world, user)
        later = Timeline().due(3600)[0]
        lost, taken = schedule(user, device_id, later, duration_s=60), schedule(user, device_id, later, duration_s=60)
        server.kill()
        # What a crash between "run recorded" and "device answered" leaves behind: one run the
        # device never took, and one it took (its activation exists) but whose answer was lost.
        due = dt.datetime.now(UTC).replace(tzinfo=None) - dt.timedelta(seconds=30)
        conn = psycopg2.connect(server.env["PUMPLINK_DATABASE_URL"])
        with conn, conn.cursor() as cur:
            for s in (lost, taken):
                cur.execute("INSERT INTO schedule_run (schedule_id, due_at, fired_at, outcome) "
                            "VALUES (%s, %s, %s, 'firing')", (s["id"], due, due))
            cur.execute("INSERT INTO activation (device_id, user_id, schedule_id, duration_s, state, reason, source, "
                        "created_at, started_at, ends_at, ended_at) VALUES (%s, %s, %s, 1, 'completed', 'completed', "
                        "'schedule', %s, %s, %s, %s) RETURNING id",
                        (device_id, user.user_id, taken["id"], due, due, due + dt.timedelta(seconds=1),
                         due + dt.timedelta(seconds=1)))
            activation_id = cur.fetchone()[0]
        conn.close()
        server.start()

        (run,) = settled_runs(user, lost["id"])
        assert run["outcome"] == "interrupted" and "at most once" in run["detail"]
        (run,) = settled_runs(user, taken["id"])
        assert run["outcome"] == "started" and run["activation_id"] == activation_id
        assert on_commands(pump) == []  # neither is fired again
        assert user.get(f"schedules/{lost['id']}").json()["next_run_at"] == lost["next_run_at"]
    finally:
        world.close()
        server.stop()
