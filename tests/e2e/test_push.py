"""Expo push notifications against a local fake of Expo: once per token per event, ever."""

from __future__ import annotations

import secrets

import pytest

from pumplink.storage import migrations
from pumplink.storage import models as m
from pumplink.live.notifier import NotifierActor, expo_endpoint
from pumplink.config import Config
from pumplink.storage.db import make_database
from pumplink.events import Alert
from pumplink.runtime import Runtime
from tests.conftest import World
from tests.support import wait_until


def expo_token(prefix: str = "ExponentPushToken") -> str:
    return f"{prefix}[{secrets.token_urlsafe(16)}]"


def register(api, token: str) -> int:
    r = api.post("register-push-token", {"token": token})
    assert r.status_code in (200, 201), r.text
    return r.status_code


def activate(api, device_id: int, seconds: int = 30) -> str:
    """Start a run; the key of the device_on alert it causes."""
    r = api.post("activate", {"device_id": device_id, "duration_s": seconds})
    assert r.status_code == 202, r.text
    return f"device_on:activation:{r.json()['activation']['id']}"


def force_shutdown(admin, device_id: int) -> None:
    r = admin.post(f"device/{device_id}/force-shutdown", {})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def push_server(server_factory, expo):
    return server_factory(PUMPLINK_PUSH_ENABLED="true", PUMPLINK_EXPO_URL=expo.url)


@pytest.fixture
def push_world(push_server):
    w = World(push_server)
    yield w
    w.close()


def test_one_push_per_token_per_event_titled_with_the_device_and_none_again_after_restart(push_world, expo):
    w = push_world
    device_id = w.device("Orchard pump")
    w.pump(device_id)
    owner, other, pending, gone = w.user(), w.user(), w.user(), w.user()
    tokens = {"admin": expo_token(), "owner1": expo_token(), "owner2": expo_token("ExpoPushToken"),
              "other": expo_token(), "pending": expo_token(), "gone": expo_token()}
    register(w.admin, tokens["admin"])
    register(owner, tokens["owner1"])
    register(owner, tokens["owner2"])
    register(other, tokens["other"])
    register(pending, tokens["pending"])
    register(gone, tokens["gone"])
    # Tokens registered while approved; the accounts are then demoted and deleted: they get nothing.
    assert w.admin.patch(f"users/{pending.user_id}", {"role": "pending"}).status_code == 200
    assert w.admin.delete(f"users/{gone.user_id}").status_code == 200
    wait_until(lambda: owner.get(f"devices/{device_id}").json()["state"] == "off", what="device off")

    key = activate(owner, device_id)
    approved = {tokens[k] for k in ("admin", "owner1", "owner2", "other")}
    expo.wait_for(lambda f: {msg["to"] for msg in f.for_event(key)} >= approved, what="the ON push")
    sent = expo.for_event(key)
    assert sorted(msg["to"] for msg in sent) == sorted(approved), "one per approved token; none for pending users"
    assert not {tokens["pending"], tokens["gone"]} & {to for _, to in expo.attempted}, "a demoted or deleted account was told"
    assert {msg["title"] for msg in sent} == {"Orchard pump"}
    assert all("ON" in msg["body"] for msg in sent)

    # A restart while the pump runs: recovery resumes the activation; nothing is sent again.
    w.server.stop()
    w.server.start()
    force_shutdown(w.admin, device_id)
    shutdowns = expo.wait_for(lambda f: [k for k, msgs in f.events_of("force_shutdown").items()
                                         if any(msg["data"]["device_id"] == device_id for msg in msgs)],
                              what="the force-shutdown push")
    assert [msg["to"] for msg in expo.for_event(shutdowns[0])] == [tokens["admin"]], "admins only"
    assert sorted(msg["to"] for msg in expo.for_event(key)) == sorted(approved), "the ON push was sent again"

    second = activate(owner, device_id)
    expo.wait_for(lambda f: len(f.for_event(second)) == len(approved), what="the second ON push")
    assert sorted(msg["to"] for msg in expo.for_event(key)) == sorted(approved)
    force_shutdown(w.admin, device_id)


def test_device_not_registered_removes_the_token(push_world, expo):
    w = push_world
    device_id = w.device("Well pump")
    w.pump(device_id)
    user = w.user()
    dead, alive = expo_token(), expo_token()
    expo.unregistered.add(dead)
    register(user, dead)
    register(user, alive)
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="device off")

    keys = []
    for _ in range(2):
        keys.append(activate(user, device_id))
        expo.wait_for(lambda f: any(msg["to"] == alive for msg in f.for_event(keys[-1])), what="the ON push")
        force_shutdown(w.admin, device_id)
    tried = [t for t in expo.attempted if t[0] in keys and t[1] == dead]
    assert tried == [(keys[0], dead)], "a token Expo called DeviceNotRegistered was used again"
    r = user.delete("push-token", json={"token": dead})
    assert r.status_code == 404 and r.json()["code"] == "push_token_not_found"


def test_a_refused_request_is_retried_once_it_can_succeed(push_world, expo):
    w = push_world
    device_id = w.device("Retry pump")
    w.pump(device_id)
    user = w.user()
    token = expo_token()
    register(user, token)
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="device off")

    before = len(expo.requests)
    expo.refusals[token] = 2
    key = activate(user, device_id)
    expo.wait_for(lambda f: any(msg["to"] == token for msg in f.for_event(key)), timeout=15, what="the retried push")
    tries = [req for req in expo.requests[before:] if key in req["events"]]
    assert [req["status"] for req in tries] == [503, 503, 200]
    first_wait, second_wait = tries[1]["at"] - tries[0]["at"], tries[2]["at"] - tries[1]["at"]
    assert 0.8 < first_wait < second_wait, "retries back off"
    assert [msg["to"] for msg in expo.for_event(key)].count(token) == 1
    force_shutdown(w.admin, device_id)


def test_push_token_api(world):
    user, other = world.user(), world.user()
    token = expo_token()
    assert user.post("register-push-token", {"token": token}).status_code == 201
    assert user.post("register-push-token", {"token": token}).status_code == 200  # stored once
    assert user.post("register-push-token", {"token": expo_token("ExpoPushToken")}).status_code == 201

    # Registering it from another account moves it there.
    r = other.post("register-push-token", {"token": token})
    assert r.status_code == 200 and "moved" in r.json()["message"]
    r = user.delete("push-token", json={"token": token})
    assert r.status_code == 404 and r.json()["code"] == "push_token_not_found"
    assert other.delete("push-token", params={"token": token}).status_code == 200
    assert other.delete("push-token", json={"token": token}).status_code == 404

    for bad in ("ExponentPushToken", "ExponentPushToken[]", "fcm:abc", "ExponentPushToken[a b]", "x" * 300):
        r = user.post("register-push-token", {"token": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]
    for malformed in ({}, {"token": 42}, {"token": None}):
        r = user.post("register-push-token", malformed)
        assert r.status_code == 400, (malformed, r.text)
    r = world.server.api().post("register-push-token", {"token": expo_token()})
    assert r.status_code == 401


# --- the notifier actor itself, on a real database, against the fake ------------------------------
@pytest.fixture(params=["postgresql", "sqlite"])
def notifier_rt(request, pg_factory, expo, tmp_path):
    url = pg_factory() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'notifier.db'}"
    db = make_database(url)
    migrations.migrate(db)
    config = Config(database_url="postgresql://unused", jwt_secret="x" * 40, expo_url=expo.url,
                    expo_access_token="expo-secret-token")
    rt = Runtime.build(config, db)
    yield rt
    db.close_all() if hasattr(db, "close_all") else db.close()


def test_notifier_sends_each_event_once_per_token_across_actor_restarts(notifier_rt, expo):
    rt = notifier_rt
    with rt.db.connection_context():
        admin = m.User.create(email=f"a{secrets.token_hex(4)}@example.org", password_hash="x", role="admin")
        device = m.Device.create(name="Canal pump")
        tokens = [expo_token() for _ in range(3)]
        for token in tokens:
            m.PushToken.create(token=token, user=admin.id)
        gone = expo_token()
        m.PushToken.create(token=gone, user=admin.id)
    expo.unregistered_on_receipt.add(gone)

    def alert(key: str) -> Alert:
        return Alert(key=key, kind="force_shutdown", device_id=device.id, title="ignored", body="Stopped.",
                     audience="admins")

    key = f"test:{secrets.token_hex(4)}"
    asked = len(expo.receipts_asked)
    ref = NotifierActor.start(rt, receipt_delay_s=0.2)
    try:
        ref.tell(alert(key))
        ref.tell(alert(key))  # the same event again: nothing more
        expo.wait_for(lambda f: len(f.receipts_asked) >= asked + 4 and len(f.for_event(key)) == 4,
                      what="pushes and receipts")
    finally:
        ref.stop()
    # A new actor (as after a restart) given the same event sends nothing; a new event goes out.
    ref = NotifierActor.start(rt)
    try:
        later = f"test:{secrets.token_hex(4)}"
        ref.tell(alert(key))
        ref.tell(alert(later))
        expo.wait_for(lambda f: len(f.for_event(later)) == 3, what="the later event")
    finally:
        ref.stop()
    assert sorted(msg["to"] for msg in expo.for_event(key)) == sorted(tokens + [gone])
    assert {msg["title"] for msg in expo.for_event(key)} == {"Canal pump"}
    assert gone not in {msg["to"] for msg in expo.for_event(later)}, "a token Expo's receipt called unregistered"
    sent = [req for req in expo.requests if req["status"] == 200]
    assert all(req["headers"].get("Authorization") == "Bearer expo-secret-token" for req in sent[-2:])
    with rt.db.connection_context():
        statuses = dict(m.SentNotification.select(m.SentNotification.token, m.SentNotification.status)
                        .where(m.SentNotification.event_key == key).tuples())
    assert statuses[gone] == "unregistered"
    assert {statuses[t] for t in tokens} == {"delivered"}


def test_alerts_reach_only_the_accounts_allowed_at_send_time(notifier_rt, expo):
    """Each audience is resolved with the roles as they are when the alert is sent: a pending or
    deleted account is told nothing, even of its own activation or schedule."""
    rt = notifier_rt
    with rt.db.connection_context():
        device = m.Device.create(name="Audience pump")
        people = {role: m.User.create(email=f"{role}{secrets.token_hex(4)}@example.org", password_hash="x",
                                      role="user" if role in ("plain", "gone", "outsider") else role)
                  for role in ("admin", "plain", "pending", "gone", "outsider")}
        # Members of the device's site, as approval makes them; the outsider is approved but not a member.
        for name in ("plain", "pending", "gone"):
            m.Membership.create(site=device.site_id, user=people[name].id, role="operator")
        tokens = {name: expo_token() for name in people}
        for name, user in people.items():
            m.PushToken.create(token=tokens[name], user=user.id)
        m.User.delete().where(m.User.id == people["gone"].id).execute()  # its token goes with it
    ids = {name: user.id for name, user in people.items()}
    cases = {
        "approved": (dict(audience="approved"), {"admin", "plain"}),
        "admins": (dict(audience="admins"), {"admin"}),
        "plain": (dict(audience=f"user:{ids['plain']}"), {"plain"}),
        "pending": (dict(audience=f"user:{ids['pending']}"), set()),
        "gone": (dict(audience=f"user:{ids['gone']}"), set()),
        "admins+plain": (dict(audience="admins", extra_user_id=ids["plain"]), {"admin", "plain"}),
        "admins+pending": (dict(audience="admins", extra_user_id=ids["pending"]), {"admin"}),
        "outsider": (dict(audience=f"user:{ids['outsider']}"), set()),
        "admins+outsider": (dict(audience="admins", extra_user_id=ids["outsider"]), {"admin"}),
    }
    run = secrets.token_hex(4)
    ref = NotifierActor.start(rt)
    try:
        for case, (audience, _) in cases.items():
            ref.tell(Alert(key=f"audience:{run}:{case}", kind="activation_failed", device_id=device.id,
                           title="t", body="b", **audience))
        last = f"audience:{run}:last"
        ref.tell(Alert(key=last, kind="activation_failed", device_id=device.id, title="t", body="b",
                       audience="admins"))
        # One actor handles alerts in order: once the last one is out, every earlier one is settled.
        expo.wait_for(lambda f: f.for_event(last), what="the last alert")
    finally:
        ref.stop()
    by_token = {token: name for name, token in tokens.items()}
    for case, (_, expected) in cases.items():
        told = {by_token[msg["to"]] for msg in expo.for_event(f"audience:{run}:{case}")}
        assert told == expected, (case, told)


def test_expo_endpoint_split():
    assert expo_endpoint("https://exp.host/--/api/v2/push/send") == ("https://exp.host", "/--/api/v2")
    assert expo_endpoint("http://127.0.0.1:9/--/api/v2/push/send/") == ("http://127.0.0.1:9", "/--/api/v2")
    assert expo_endpoint("http://proxy.local/expo") == ("http://proxy.local", "/expo")

