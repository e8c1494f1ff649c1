"""PostgreSQL goes away for 5 s: requests get a quick 503, nothing crashes, service resumes by
itself, and the devices keep their state through it.

The database is a private cluster of this module (the machine's shared one serves other
people's tests). The outage is played once; each test below judges one promise about it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import pytest

from tests.conftest import World
from tests.faults.conftest import TERMINAL, overruns, start_pump, wait_activation, wait_state
from tests.support import MQTT_URL

OUTAGE_S = 5.0
QUICK_S = 1.0  # a request during the outage is answered within this
LONG_S = 9  # outlasts the outage and the recovery
SHORT_S = 2  # ends while the database is away
UTC = dt.timezone.utc


@dataclasses.dataclass
class Outage:
    """What was seen during and after the outage; the tests judge it."""

    probes: list = dataclasses.field(default_factory=list)  # (what, status, seconds, body)
    health: list = dataclasses.field(default_factory=list)
    alive_during: bool = False
    resumed_after_s: float | None = None
    after: list = dataclasses.field(default_factory=list)  # (what, status) once requests succeed again
    long_view: dict | None = None  # the long-running device as shown right after the outage
    long_pump_on: bool | None = None
    long_done: dict | None = None
    long_act: dict | None = None
    short_done: dict | None = None
    short_device: dict | None = None
    short_pump: str | None = None
    short_again: tuple | None = None  # (status, final activation) of a run asked for afterwards
    schedule: dict | None = None
    sched_on: bool | None = None
    overruns: list = dataclasses.field(default_factory=list)
    alive_after: bool = False


def poll(fn, timeout: float, interval: float = 0.1):
    """The first truthy value of ``fn`` within ``timeout``, else its last value (for the tests to judge)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except (ValueError, KeyError):  # a 503 body while service resumes
            value = None
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def timed(api, method: str, path: str, body=None):
    began = time.monotonic()
    r = api.request(method, path, json=body, timeout=10)
    took = time.monotonic() - began
    try:
        parsed = r.json()
    except ValueError:
        parsed = r.text
    return r.status_code, took, parsed


@pytest.fixture(scope="module")
def outage(server_factory, private_postgres) -> Outage:
    pg = private_postgres
    server = server_factory(database_url=pg.create_database("pumplink_faults"))
    world = World(server)
    seen = Outage()
    try:
        user = world.user()
        long_id, short_id, sched_id = world.device("Long"), world.device("Short"), world.device("Scheduled")
        pumps = {d: start_pump(world, d, MQTT_URL) for d in (long_id, short_id, sched_id)}
        for d in pumps:
            wait_state(user, d, "off")
        long = user.post("activate", {"device_id": long_id, "duration_s": LONG_S}).json()["activation"]
        short = user.post("activate", {"device_id": short_id, "duration_s": SHORT_S}).json()["activation"]
        for a in (long, short):
            wait_activation(user, a["id"], "running")
        due = dt.datetime.now(UTC) + dt.timedelta(seconds=2.5)  # due while the database is away
        r = user.post("schedules", {"device_id": sched_id, "start_time": due.isoformat(), "duration_s": 1})
        assert r.status_code == 201, r.text
        schedule_id = r.json()["schedule"]["id"]

        pg.stop()
        down_at = time.monotonic()
        probes = [
            ("GET device", "GET", f"devices/{long_id}", None),
            ("POST activate", "POST", "activate", {"device_id": sched_id, "duration_s": 1}),
            ("GET activations", "GET", "activations", None),
            ("GET schedules", "GET", "schedules", None),
            ("POST schedules", "POST", "schedules",
             {"device_id": sched_id, "start_time": (due + dt.timedelta(hours=1)).isoformat(), "duration_s": 1}),
            ("POST login", "POST", "login", {"email": "nobody@example.org", "password": "password-123"}),
            ("GET ready", "GET", "ready", None),
        ]
        while time.monotonic() < down_at + OUTAGE_S:
            for what, method, path, body in probes:
                seen.probes.append((what, *timed(user, method, path, body)))
            seen.health.append(server.api().get("health").status_code)
            time.sleep(0.2)  # pacing: the outage lasts its length whatever the server does
        seen.alive_during = server.proc.poll() is None
        pg.start()
        up_at = time.monotonic()

        if poll(lambda: user.get(f"devices/{long_id}").status_code == 200, timeout=10):
            seen.resumed_after_s = time.monotonic() - up_at
            r = user.get(f"devices/{long_id}")
            seen.long_view = r.json() if r.status_code == 200 else None
            seen.long_pump_on = pumps[long_id].state == "on"
            for _ in range(5):
                for what, _, path, _ in probes:
                    if what.startswith("GET"):
                        seen.after.append((what, user.get(path).status_code))

        def ended(activation_id):
            return lambda: (a := user.get(f"activations/{activation_id}").json()).get("state") in TERMINAL and a

        seen.long_act = long
        seen.long_done = poll(ended(long["id"]), timeout=LONG_S + 5)
        seen.short_done = poll(ended(short["id"]), timeout=5)
        seen.short_device = poll(lambda: (d := user.get(f"devices/{short_id}").json()).get("state") == "off" and d,
                                 timeout=2) or user.get(f"devices/{short_id}").json()
        seen.short_pump = pumps[short_id].state
        r = user.post("activate", {"device_id": short_id, "duration_s": 1})
        again = poll(ended(r.json()["activation"]["id"]), timeout=8) if r.status_code == 202 else None
        seen.short_again = (r.status_code, again or r.json())
        seen.schedule = poll(lambda: (s := user.get(f"schedules/{schedule_id}").json()).get("runs")
                             and all(x["outcome"] != "firing" for x in s["runs"]) and s, timeout=12)
        seen.sched_on = bool(poll(lambda: pumps[sched_id].runs, timeout=5))
        r = world.admin.get("activations?limit=500")
        if r.status_code == 200:
            durations = {a["id"]: a["duration_s"] for a in r.json()["items"]}
            for pump in pumps.values():
                seen.overruns += overruns(pump, durations, 1.0)
        seen.alive_after = server.proc.poll() is None
        yield seen
    finally:
        world.close()
        server.stop()


def test_requests_during_the_outage_get_a_quick_503_with_an_error_body(outage):
    assert outage.probes, "no request was made during the outage"
    slow = [(what, status, round(took, 2)) for what, status, took, _ in outage.probes if took >= QUICK_S]
    assert slow == [], f"answered slower than {QUICK_S}s during the outage"
    wrong = [(what, status, body) for what, status, _, body in outage.probes
             if status != 503 or not isinstance(body, dict) or not {"error", "code"} <= set(body)]
    assert wrong == []
    worst = max(took for _, _, took, _ in outage.probes)
    print(f"{len(outage.probes)} requests during a {OUTAGE_S:.0f}s database outage: all 503, slowest {worst * 1000:.0f}ms")
    assert set(outage.health) == {200}, "liveness does not depend on the database"


def test_the_server_survives_and_resumes_by_itself(outage):
    assert outage.alive_during and outage.alive_after, "the server process died"
    assert outage.resumed_after_s is not None, "requests did not succeed again within 10s of the database's return"
    failed = [(what, status) for what, status in outage.after if status != 200]
    assert failed == [], "once service resumed, every later request must succeed"
    print(f"service resumed {outage.resumed_after_s:.2f}s after the database came back")


def test_a_run_through_the_outage_is_still_shown_and_completes_on_time(outage):
    view = outage.long_view
    assert view is not None
    assert outage.long_pump_on, "the long run was still on at the pump when service resumed"
    assert view["state"] == "on" and view["running"] and view["running"]["id"] == outage.long_act["id"], view
    done = outage.long_done
    assert done and (done["state"], done["reason"]) == ("completed", "completed"), done
    late = (dt.datetime.fromisoformat(done["ended_at"].replace("Z", "+00:00"))
            - dt.datetime.fromisoformat(done["ends_at"].replace("Z", "+00:00"))).total_seconds()
    assert abs(late) < 1.5, f"ended {late:.2f}s from its intended end"
    assert outage.overruns == []


def test_a_run_that_ended_during_the_outage_is_closed_and_its_device_usable_afterwards(outage):
    done = outage.short_done
    assert done and done["state"] in TERMINAL and done["reason"], f"still open after the outage: {done}"
    assert (done["state"], done["reason"]) == ("completed", "completed"), done
    device = outage.short_device
    assert outage.short_pump == "off"
    assert device["state"] == "off" and device["running"] is None, device
    status, again = outage.short_again
    assert status == 202, again
    assert again.get("state") == "completed", f"a run asked for after the outage: {again}"


def test_a_schedule_due_during_the_outage_fires_once_the_database_is_back(outage):
    s = outage.schedule
    assert s, "the schedule's run was not settled within 12s of the database's return"
    assert [r["outcome"] for r in s["runs"]] == ["started"], s["runs"]
    assert outage.sched_on, "the pump never got the scheduled ON"
