"""Ten SIGKILLs at random moments while pumps run, requests arrive and schedules are pending.

The rounds are played once for the module (a seeded plan: ``PUMPLINK_FAULT_SEED`` replays
it); each test below judges one promise about what they left behind.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import random
import threading
import time

import pytest
import requests
from dateutil import rrule as du

from tests.conftest import World
from tests.faults.conftest import TERMINAL, RecordingPump, all_pages, overruns, start_pump, wait_state
from tests.support import MQTT_URL

SEED = int(os.environ.get("PUMPLINK_FAULT_SEED", "7"))
ROUNDS = 10
PUMPS = 4
SLACK_S = 2.0  # no pump runs more than this past its intended end
RECURRING = "FREQ=SECONDLY;INTERVAL=3;COUNT=2"
UTC = dt.timezone.utc


def when(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def due_times(schedule: dict) -> list[dt.datetime]:
    """Every time a schedule is due, from its start and rule (the server runs in UTC here)."""
    start = when(schedule["start_time"])
    if not schedule["rrule"]:
        return [start]
    return list(du.rrulestr(schedule["rrule"], dtstart=start))


@dataclasses.dataclass
class Client:
    """A user hammering the server from its own thread: activations and schedules, crash or not."""

    user: object
    devices: list[int]
    rng: random.Random
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    accepted: list = dataclasses.field(default_factory=list)  # activations answered 202
    schedules: list = dataclasses.field(default_factory=list)  # schedules answered 201
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    server_errors: list = dataclasses.field(default_factory=list)  # any 5xx but 503
    unanswered: int = 0  # refused while the server was down, or cut off by a crash

    def run(self) -> None:
        while not self.stop.is_set():
            device_id = self.rng.choice(self.devices)
            if self.rng.random() < 0.6:
                path, body = "activate", {"device_id": device_id, "duration_s": self.rng.randint(1, 3)}
            else:
                start = dt.datetime.now(UTC) + dt.timedelta(seconds=self.rng.uniform(0.5, 4.0))
                body = {"device_id": device_id, "start_time": start.isoformat(), "duration_s": self.rng.randint(1, 2)}
                if self.rng.random() < 0.3:
                    body["rrule"] = RECURRING
                path = "schedules"
            try:
                r = self.user.post(path, body, timeout=20)
            except requests.RequestException:
                self.unanswered += 1
            else:
                self.statuses[(path, r.status_code)] += 1
                if r.status_code >= 500 and r.status_code != 503:
                    self.server_errors.append((path, r.status_code, r.text[:300]))
                elif r.status_code == 202:
                    self.accepted.append(r.json()["activation"])
                elif r.status_code == 201:
                    self.schedules.append(r.json()["schedule"])
            self.stop.wait(self.rng.uniform(0.1, 0.4))  # pacing of one user's taps


@dataclasses.dataclass
class Aftermath:
    plan: list
    kills: list  # when each SIGKILL was sent (monotonic, as the pumps' records)
    client: Client
    pumps: dict[int, RecordingPump]
    activations: dict[int, dict]
    schedules: list[dict]
    devices: dict[int, dict]
    sessions: dict[int, list]
    settled: bool
    alive: bool
    took_s: float

    def why(self, text: str) -> str:
        return f"seed {SEED} (PUMPLINK_FAULT_SEED={SEED} replays the plan {self.plan}): {text}"


def accounting(schedule: dict, activations: dict[int, dict]) -> list[str]:
    """What is wrong with one schedule's record of its due times (empty when each is accounted for)."""
    problems = []
    runs = {when(r["due_at"]): r for r in schedule["runs"]}
    dues = due_times(schedule)
    now = dt.datetime.now(UTC)
    for due in dues:
        run = runs.get(due)
        if run is None:
            pending = when(schedule["next_run_at"]) == due and schedule["enabled"]
            if not pending or due < now - dt.timedelta(seconds=5):
                problems.append(f"schedule {schedule['id']}: due {due} neither fired, missed nor pending")
        elif run["outcome"] == "firing":
            problems.append(f"schedule {schedule['id']}: run {run} never settled")
        elif run["outcome"] in ("started", "queued"):
            act = activations.get(run["activation_id"])
            if act is None or act["schedule_id"] != schedule["id"]:
                problems.append(f"schedule {schedule['id']}: run {run} names activation {act}")
    extra = set(runs) - set(dues)
    if extra:
        problems.append(f"schedule {schedule['id']}: runs at {sorted(extra)} it was never due")
    linked = collections.Counter(r["activation_id"] for r in schedule["runs"] if r["activation_id"])
    own = [a["id"] for a in activations.values() if a["schedule_id"] == schedule["id"]]
    if sorted(own) != sorted(linked) or any(n > 1 for n in linked.values()):
        problems.append(f"schedule {schedule['id']}: activations {own} but its runs name {dict(linked)}; "
                        "each due time starts at most one")
    return problems


def all_accounted(admin) -> tuple[bool, dict, list]:
    activations = {a["id"]: a for a in all_pages(admin, "activations")}
    schedules = all_pages(admin, "schedules")
    done = all(a["state"] in TERMINAL for a in activations.values()) and not any(
        accounting(s, activations) for s in schedules)
    return done, activations, schedules


@pytest.fixture(scope="module")
def aftermath(server_factory) -> Aftermath:
    rng = random.Random(SEED)
    print(f"SIGKILL rounds: seed {SEED}")
    began = time.monotonic()
    server = server_factory()
    world = World(server)
    try:
        user = world.user()
        devices = [world.device(f"Field {n}") for n in range(PUMPS)]
        pumps = {d: start_pump(world, d, MQTT_URL) for d in devices}
        for d in devices:
            wait_state(user, d, "off")
        client = Client(user, devices, random.Random(SEED + 1))
        load = threading.Thread(target=client.run, name="fault-client", daemon=True)
        load.start()
        plan, kills = [], []
        for _ in range(ROUNDS):
            at, down = round(rng.uniform(0.3, 2.5), 2), round(rng.uniform(0.0, 1.0), 2)
            plan.append((at, down))
            time.sleep(at)  # the random moment of the crash, while the client keeps tapping
            kills.append(time.monotonic())
            server.kill()
            time.sleep(down)  # the server is dead: its downtime is the plan's, nothing to wait on
            server.start()
        client.stop.set()
        load.join(25)

        # Let every due time pass, then give the server time to settle what it owes.
        schedules = all_pages(world.admin, "schedules")
        last_due = max((t for s in schedules for t in due_times(s)), default=dt.datetime.now(UTC))
        deadline = time.monotonic() + max(0.0, (last_due - dt.datetime.now(UTC)).total_seconds()) + 30
        settled, activations, schedules = False, {}, []
        while time.monotonic() < deadline:
            settled, activations, schedules = all_accounted(world.admin)
            if settled and all(p.state == "off" for p in pumps.values()):
                break
            time.sleep(0.2)
        views = {}
        for d in devices:
            try:
                views[d] = wait_state(user, d, "off", timeout=5)
            except AssertionError:
                views[d] = user.get(f"devices/{d}").json()
        yield Aftermath(
            plan=plan, kills=kills, client=client, pumps=pumps, activations=activations, schedules=schedules, devices=views,
            sessions={d: all_pages(user, f"devices/{d}/sessions") for d in devices}, settled=settled,
            alive=server.proc.poll() is None, took_s=time.monotonic() - began,
        )
    finally:
        world.close()
        server.stop()


def test_the_server_came_back_every_time_and_never_answered_500(aftermath):
    c = aftermath.client
    mid_run = sum(any(r["on"] <= t <= (r["off"] or t) for p in aftermath.pumps.values() for r in p.runs)
                  for t in aftermath.kills)
    print(f"seed {SEED}: {ROUNDS} kills in {aftermath.took_s:.1f}s, {mid_run} of them with a pump on; "
          f"{len(c.accepted)} activations accepted, {len(c.schedules)} schedules made, {c.unanswered} requests "
          f"unanswered; {dict(c.statuses)}")
    assert mid_run >= 1, aftermath.why("no kill hit a running pump: the plan tested nothing")
    assert aftermath.alive
    assert c.server_errors == [], aftermath.why("answers a user would see as a crash")
    assert c.accepted and c.schedules, aftermath.why("the client got nothing done between the crashes")


def test_no_pump_ran_more_than_2s_past_its_intended_end(aftermath):
    durations = {aid: a["duration_s"] for aid, a in aftermath.activations.items()}
    problems = []
    for pump in aftermath.pumps.values():
        problems += overruns(pump, durations, SLACK_S)
        if pump.state != "off":
            problems.append(f"pump {pump.device_id} is still on")
        for body in pump.bodies.values():
            if body.get("action") == "on" and body.get("duration_s") != durations.get(body.get("activation_id")):
                problems.append(f"pump {pump.device_id}: ON {body} does not carry its activation's duration")
    runs = sum(len(p.runs) for p in aftermath.pumps.values())
    print(f"seed {SEED}: {runs} pump runs checked")
    assert problems == [], aftermath.why("pumps ran past their intended end")


def test_every_accepted_activation_ends_in_a_terminal_state_with_a_reason(aftermath):
    acts = aftermath.activations
    missing = [a["id"] for a in aftermath.client.accepted if a["id"] not in acts]
    assert missing == [], aftermath.why("accepted activations that are not on record")
    open_or_silent = [a for a in acts.values() if a["state"] not in TERMINAL or not a["reason"] or not a["ended_at"]]
    assert open_or_silent == [], aftermath.why("activations without an honest end")
    print(f"seed {SEED}: {len(acts)} activations: "
          f"{dict(collections.Counter((a['state'], a['reason']) for a in acts.values()))}")


def test_no_schedule_is_lost(aftermath):
    problems = [p for s in aftermath.schedules for p in accounting(s, aftermath.activations)]
    assert problems == [], aftermath.why("schedules whose due times are not accounted for")
    made = {s["id"] for s in aftermath.client.schedules}
    assert made <= {s["id"] for s in aftermath.schedules}, aftermath.why("schedules answered 201 are gone")
    outcomes = collections.Counter(r["outcome"] for s in aftermath.schedules for r in s["runs"])
    print(f"seed {SEED}: {len(aftermath.schedules)} schedules, run outcomes {dict(outcomes)}")


def test_the_records_agree_with_the_pumps_afterwards(aftermath):
    problems = []
    for d, view in aftermath.devices.items():
        pump = aftermath.pumps[d]
        if view.get("state") != pump.state or view.get("running") or view.get("queue"):
            problems.append(f"device {d} shows {view.get('state')} (running {view.get('running')}, "
                            f"queue {view.get('queue')}) while its pump is {pump.state}")
        still_open = [s for s in aftermath.sessions[d] if not s["ended_at"]]
        if still_open:
            problems.append(f"device {d}: sessions {still_open} are open while the pump is {pump.state}")
    assert problems == [], aftermath.why("records that disagree with the pumps")

