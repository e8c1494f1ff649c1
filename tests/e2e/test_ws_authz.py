"""Who receives what on the live WebSocket (issue 10, findings 6, 7 and 12; issue 11 item 2).

Each receiver gets only what REST would show it: its own activations and schedules, every
device's state; admins get everything. A socket follows its account: closed with 1008 within
seconds of deletion or demotion to pending, re-filtered on promotion, never closed just because
a text-mode (app) token expired. Events are numbered and fanned out in order by one actor, so a
frame every receiver may see (a sentinel device's state) marks "everything before it was sent".
"""

from __future__ import annotations

import datetime as dt
import time

import jwt
import psycopg2
import pytest
import websocket

from tests.conftest import ADMIN, World
from tests.e2e.test_ws import close_code, connect, recv_json, recv_until, ws_url
from tests.support import wait_until

UTC = dt.timezone.utc
CLOSE_WITHIN_S = 2.0
TTL_S = 2


# --- helpers ------------------------------------------------------------------------------------
def ready(world: World, name: str):
    device_id = world.device(name)
    pump = world.pump(device_id)
    return device_id, pump


def all_off(api, *device_ids):
    wait_until(lambda: all(api.get(f"devices/{d}").json()["state"] == "off" for d in device_ids),
               what=f"devices {device_ids} off")


def demote(admin, user_id: int, role: str = "pending") -> None:
    r = admin.patch(f"users/{user_id}", {"role": role})
    assert r.status_code == 200, r.text


def pending_user(world: World):
    """A pending account with a working token: logged in while approved, then demoted (a pending
    account cannot log in). Its token still decodes; its role applies at the next check."""
    api = world.user()
    demote(world.admin, api.user_id)
    return api


def activate(api, device_id: int, seconds: int = 1) -> int:
    r = api.post("activate", {"device_id": device_id, "duration_s": seconds})
    assert r.status_code == 202, r.text
    return r.json()["activation"]["id"]


def json_socket(server, api) -> websocket.WebSocket:
    ws = connect(ws_url(server), token=api.token, timeout=10)
    snapshot = recv_json(ws)
    assert snapshot["type"] == "snapshot"
    ws.snapshot = snapshot
    return ws


def text_socket(server, token: str, timeout: float = 10) -> websocket.WebSocket:
    ws = connect(ws_url(server, "/ws"), timeout=timeout)
    ws.send(token)
    return ws


class Sentinel:
    """A device whose state every account may see: toggling it marks the end of a phase."""

    def __init__(self, world: World):
        self.device_id, self.pump = ready(world, "Sentinel")
        self.state = "off"

    def mark(self) -> str:
        self.state = "on" if self.state == "off" else "off"
        self.pump.manual(self.state)
        return self.state

    def read_until(self, ws, state: str) -> list[dict]:
        last, before = recv_until(ws, lambda m: m["type"] == "device.state" and m["device_id"] == self.device_id
                                  and m["state"] == state, limit=2000)
        return before + [last]


def owner_of(frame: dict, schedule_owners: dict[int, int]) -> int | None:
    if frame["type"] == "activation":
        return frame["activation"]["user_id"]
    return schedule_owners.get(frame["schedule_id"], (frame.get("schedule") or {}).get("user_id"))


def private(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] in ("activation", "schedule")]


def start_in(seconds: float) -> str:
    return (dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def wait_closed(ws, started: float) -> tuple[int, str, float]:
    code, reason = close_code(ws)
    return code, reason, time.monotonic() - started


@pytest.fixture(scope="module")
def authz_server(server_factory):
    return server_factory()


@pytest.fixture
def w(authz_server):
    world = World(authz_server)
    yield world
    world.close()


# --- every receiver ----------------------------------------------------------------------------
def test_each_receiver_gets_only_what_rest_shows_it(w):
    server, admin = w.server, w.admin
    (a, _), (b, _) = ready(w, "Alice's pump"), ready(w, "Bob's pump")
    sentinel = Sentinel(w)
    alice, bob, carol = w.user(), w.user(), pending_user(w)
    all_off(alice, a, b, sentinel.device_id)
    sockets = {"admin": json_socket(server, admin), "alice": json_socket(server, alice),
               "bob": json_socket(server, bob), "carol": json_socket(server, carol)}

    # The snapshot is every device's state, as GET /devices shows every account; nothing private.
    for name, ws in sockets.items():
        devices = {d["device_id"]: d for d in ws.snapshot["devices"]}
        assert {a, b, sentinel.device_id} <= set(devices), name
        assert all(set(d) <= {"device_id", "name", "state", "available", "activation_id"} for d in devices.values())

    alice_run = activate(alice, a)
    bob_run = activate(bob, b)
    r = alice.post("schedules", {"device_id": a, "start_time": start_in(3), "duration_s": 1})
    assert r.status_code == 201, r.text
    alice_schedule = r.json()["schedule"]["id"]
    r = bob.post("schedules", {"device_id": b, "start_time": start_in(3600), "duration_s": 60})
    assert r.status_code == 201, r.text
    bob_schedule = r.json()["schedule"]["id"]
    assert bob.delete(f"schedules/{bob_schedule}").status_code in (200, 204)
    runs = wait_until(lambda: [x for x in alice.get(f"schedules/{alice_schedule}").json()["runs"]
                               if x["outcome"] != "firing"], what="alice's schedule fired")
    scheduled_run = runs[0]["activation_id"]
    wait_until(lambda: all(alice.get("activations").json()["items"][i]["state"] == "completed" for i in (0, 1)),
               timeout=15, what="alice's two runs completed")
    wait_until(lambda: bob.get("activations").json()["items"][0]["state"] == "completed", what="bob's run completed")
    mark = sentinel.mark()
    seen = {name: sentinel.read_until(ws, mark) for name, ws in sockets.items()}

    ids = {"alice": alice.user_id, "bob": bob.user_id, "carol": carol.user_id}
    schedule_owners = {alice_schedule: alice.user_id, bob_schedule: bob.user_id}
    # No non-admin socket ever carries another account's activation or schedule.
    for name in ("alice", "bob", "carol"):
        strangers = [f for f in private(seen[name]) if owner_of(f, schedule_owners) != ids[name]]
        assert strangers == [], f"{name} was sent another account's events: {strangers[:3]}"

    def activations(name):
        return {f["activation_id"] for f in seen[name] if f["type"] == "activation"}

    def schedule_changes(name):
        return {(f["schedule_id"], f["change"]) for f in seen[name] if f["type"] == "schedule"}

    assert activations("alice") == {alice_run, scheduled_run}
    assert activations("bob") == {bob_run}
    assert activations("admin") >= {alice_run, bob_run, scheduled_run}
    assert schedule_changes("alice") == {(alice_schedule, "created"), (alice_schedule, "fired")}
    assert schedule_changes("bob") == {(bob_schedule, "created"), (bob_schedule, "deleted")}
    assert schedule_changes("admin") >= schedule_changes("alice") | schedule_changes("bob")
    # The pending account sees every device's state, and nothing of anyone's runs or schedules.
    assert private(seen["carol"]) == []
    for name in sockets:
        states = {(f["device_id"], f["state"]) for f in seen[name] if f["type"] == "device.state"}
        assert {(a, "on"), (b, "on"), (a, "off"), (b, "off")} <= states, name

    # REST agrees: what a socket did not get, REST does not show that account either.
    assert carol.get(f"schedules/{alice_schedule}").status_code == 404
    assert bob.get(f"schedules/{alice_schedule}").status_code == 404
    assert {x["id"] for x in alice.get("activations").json()["items"]} == activations("alice")
    for ws in sockets.values():
        ws.close()


def test_a_promotion_widens_and_a_demotion_to_user_narrows_an_open_socket(w):
    server, admin = w.server, w.admin
    (a, _) = ready(w, "Shared pump")
    sentinel = Sentinel(w)
    alice, bob = w.user(), w.user()
    all_off(alice, a, sentinel.device_id)
    ws = json_socket(server, bob)

    demote(admin, bob.user_id, "admin")
    first = activate(alice, a)
    wait_until(lambda: alice.get(f"activations/{first}").json()["state"] == "completed", what="first run done")
    demote(admin, bob.user_id, "user")
    second = activate(alice, a)
    wait_until(lambda: alice.get(f"activations/{second}").json()["state"] == "completed", what="second run done")
    frames = sentinel.read_until(ws, sentinel.mark())

    runs = {f["activation_id"] for f in frames if f["type"] == "activation"}
    assert first in runs, "promoted to admin, the open socket was not sent everyone's runs"
    assert second not in runs, "back to a plain user, the open socket was still sent another's run"
    ws.send('{"type": "ping"}')
    assert recv_until(ws, lambda m: m["type"] == "pong")[0], "a change between approved roles closed the socket"
    ws.close()


def test_a_user_deleted_or_demoted_while_connected_is_closed_with_1008_within_2_s(w):
    server, admin = w.server, w.admin
    (a, _) = ready(w, "Watched pump")
    sentinel = Sentinel(w)
    dave, erin, frank = w.user(), w.user(), w.user()
    all_off(dave, a, sentinel.device_id)
    dave_json, dave_text = json_socket(server, dave), text_socket(server, dave.token)
    erin_json = json_socket(server, erin)
    frank_text = text_socket(server, frank.token)
    assert dave_text.recv() == frank_text.recv() == "off"

    started = time.monotonic()
    assert admin.delete(f"users/{dave.user_id}").status_code == 200
    for ws in (dave_json, dave_text):
        code, reason, took = wait_closed(ws, started)
        assert code == 1008 and "deleted" in reason, (code, reason)
        assert took < CLOSE_WITHIN_S, f"closed {took:.2f} s after the deletion"

    started = time.monotonic()
    demote(admin, erin.user_id)
    demote(admin, frank.user_id)
    for ws in (erin_json, frank_text):
        code, reason, took = wait_closed(ws, started)
        assert code == 1008 and "approval" in reason, (code, reason)
        assert took < CLOSE_WITHIN_S, f"closed {took:.2f} s after the demotion"

    # Nothing was sent to the deleted account meanwhile, and the others carry on.
    watcher = json_socket(server, admin)
    activate(admin, a)
    assert sentinel.read_until(watcher, sentinel.mark())
    watcher.close()


# --- limits and the backstop --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tight_server(server_factory):
    return server_factory(PUMPLINK_MAX_WS_PER_USER="2", PUMPLINK_WS_ROLE_RECHECK_S="0.5")


def test_one_socket_over_the_limit_closes_the_accounts_oldest_not_with_1008(tight_server):
    w = World(tight_server)
    user, other = w.user(), w.user()
    first, second = json_socket(tight_server, user), json_socket(tight_server, user)
    theirs = json_socket(tight_server, other)
    third = text_socket(tight_server, user.token)
    assert third.recv() == "off"

    code, reason = close_code(first)
    assert code == 4029 and "oldest" in reason, (code, reason)  # never 1008: the app would log out
    for ws in (second, theirs):
        ws.send('{"type": "ping"}')
        assert recv_until(ws, lambda m: m["type"] == "pong")[0]
    fourth = json_socket(tight_server, user)
    assert close_code(second)[0] == 4029
    fourth.send('{"type": "ping"}')
    assert recv_until(fourth, lambda m: m["type"] == "pong")[0]
    for ws in (third, fourth, theirs):
        ws.close()


def test_a_role_changed_outside_the_server_closes_its_sockets_at_the_next_recheck(tight_server):
    w = World(tight_server)
    user = w.user()
    ws = text_socket(tight_server, user.token)
    assert ws.recv() == "off"
    # As `pumplink create-admin` or SQL in another process would: no event reaches this server.
    conn = psycopg2.connect(tight_server.env["PUMPLINK_DATABASE_URL"])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute('UPDATE "user" SET role = %s WHERE id = %s', ("pending", user.user_id))
    conn.close()
    started = time.monotonic()
    code, reason, took = wait_closed(ws, started)
    assert code == 1008 and "approval" in reason
    assert took < 0.5 + CLOSE_WITHIN_S, f"closed {took:.2f} s after the change (re-check every 0.5 s)"


# --- issue 11: the app's text socket outlives its token ------------------------------------------
class ShortTokens(World):
    """Access tokens live 2 s here: the admin logs in afresh for each action."""

    @property
    def admin(self):
        return self.login(*ADMIN)


@pytest.fixture(scope="module")
def short_server(server_factory):
    # A fresh database has device 1, the app's device; no other test uses it.
    return server_factory(PUMPLINK_ACCESS_TOKEN_TTL_S=str(TTL_S), PUMPLINK_LEGACY_DEVICE_ID="1")


def test_the_apps_socket_outlives_its_token_and_closes_within_2_s_of_demotion(short_server):
    w = ShortTokens(short_server)
    try:
        device_id = 1
        w.pump(device_id)
        email, password = "app-user@example.org", "password-123"
        r = short_server.api().post("register", {"email": email, "password": password})
        assert r.status_code == 201, r.text
        user_id = r.json()["user"]["id"]
        demote(w.admin, user_id, "user")
        r = short_server.api().post("login", {"email": email, "password": password})
        assert r.status_code == 200, r.text
        token, refresh = r.json()["access_token"], r.json()["refresh_token"]
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]

        app = text_socket(short_server, token, timeout=5)
        assert app.recv() == "off"
        # The pump is driven by runs of a second each, asked for with refreshed tokens (as the app
        # does); the socket keeps its first token, which expires after TTL_S.
        frames = []
        while time.time() < expires + 3 * TTL_S:
            r = short_server.api().post("refresh-token", {"refresh_token": refresh})
            assert r.status_code == 200, r.text
            refresh = r.json().get("refresh_token") or refresh
            activate(short_server.api(r.json()["access_token"]), device_id)
            frames += [app.recv(), app.recv()]
            assert frames[-2:] == ["on", "off"], frames
        assert short_server.api(token).get("me").status_code == 401, "the socket's token should have expired"
        assert len(frames) >= 2 * 3, frames

        started = time.monotonic()
        demote(w.admin, user_id)
        code, reason, took = wait_closed(app, started)
        assert code == 1008, (code, reason)
        assert took < CLOSE_WITHIN_S, f"closed {took:.2f} s after the demotion"
    finally:
        w.close()
