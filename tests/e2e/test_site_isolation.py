"""The isolation matrix: every route, WebSocket event type and push alert, for every kind of caller.

Callers: a server admin; the manager, operator and viewer of site A; the operator of site B; a
pending account (an operator of A sent back to waiting: it keeps a viewer's sight of A with the
token it still holds, and may do nothing); and nobody logged in. Every request targets site A's
things (its device, its operator's activation and schedule, the site itself), so site B's
operator must meet 404 everywhere: no cross-site read, write, event or push.

The routes come from the Falcon router: a route without a rule here fails the test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
from typing import Callable

import falcon.inspect
import pytest
import websocket

from pumplink.config import Config
from pumplink.events import Alert, Audience
from pumplink.live.notifier import NotifierActor
from pumplink.runtime import Runtime
from pumplink.storage import migrations
from pumplink.storage import models as m
from pumplink.storage.db import make_database
from tests.api.fakes import build
from tests.conftest import World

PEOPLE = ("admin", "manager_a", "operator_a", "viewer_a", "operator_b", "pending", "anonymous")
V1 = "/api/v1"


def expect(admin, manager_a, operator_a, viewer_a, operator_b, pending, anonymous) -> dict[str, int]:
    return dict(zip(PEOPLE, (admin, manager_a, operator_a, viewer_a, operator_b, pending, anonymous)))


ALL_200 = expect(200, 200, 200, 200, 200, 200, 200)
LOGGED_IN_200 = expect(200, 200, 200, 200, 200, 200, 401)
ADMIN_ONLY = expect(200, 403, 403, 403, 403, 403, 401)
SITE_READ = expect(200, 200, 200, 200, 404, 200, 401)
SITE_MANAGE = expect(200, 200, 403, 403, 404, 403, 401)
SITE_MANAGE_201 = expect(201, 201, 403, 403, 404, 403, 401)
SITE_RUN = expect(202, 202, 202, 403, 404, 403, 401)
OWNER_READ = expect(200, 404, 200, 404, 404, 404, 401)


@dataclasses.dataclass
class Rule:
    """How to call a route as someone (``make``: path and body, may create a fresh target) and the
    status each caller gets; ``check`` looks inside a successful answer for what must not be there."""

    expected: dict[str, int]
    make: Callable[["Ctx", str], tuple[str, dict | None]]
    check: Callable[["Ctx", str, object], None] | None = None


class Ctx:
    """Sites A, B and C, a device in A and in B with pumps, and the people of the matrix."""

    def __init__(self, server, world: World):
        self.server, self.world = server, world
        admin = self.admin = world.admin
        self.site = {}
        for name in ("A", "B", "C"):
            r = admin.post("sites", {"name": f"Site {name} {secrets.token_hex(3)}"})
            assert r.status_code == 201, r.text
            self.site[name] = r.json()["id"]
        self.device_a = self.device("A")
        self.device_b = self.device("B")
        self.device_a_fresh = lambda: self.device("A")
        world.pump(self.device_a)
        world.pump(self.device_b)
        self.api = {"admin": admin, "anonymous": server.api()}
        for person, site, role in (("manager_a", "A", "manager"), ("operator_a", "A", "operator"),
                                   ("viewer_a", "A", "viewer"), ("operator_b", "B", "operator"),
                                   ("pending", "A", "operator")):
            api = world.user("user")
            self.add_member(site, api.email, role)
            self.api[person] = api
        # Approved, an operator of A, then sent back to waiting: the membership must not count.
        r = admin.patch(f"users/{self.api['pending'].user_id}", {"role": "pending"})
        assert r.status_code == 200, r.text
        self.activation_a = self.activate("operator_a", self.device_a, 1)
        self.activation_b = self.activate("operator_b", self.device_b, 1)
        self.schedule_a = self.schedule("operator_a", self.device_a)
        self.schedule_b = self.schedule("operator_b", self.device_b)

    def device(self, site: str) -> int:
        r = self.admin.post("devices", {"name": f"Pump {site}", "site_id": self.site[site]})
        assert r.status_code == 201, r.text
        assert r.json()["site_id"] == self.site[site]
        return r.json()["id"]

    def add_member(self, site: str, email: str, role: str) -> None:
        r = self.admin.post(f"sites/{self.site[site]}/members", {"email": email, "role": role})
        assert r.status_code == 201, r.text

    def throwaway(self, site: str | None = None) -> object:
        api = self.world.user("user")
        if site is not None:
            self.add_member(site, api.email, "operator")
        return api

    def activate(self, person: str, device: int, seconds: int) -> int:
        r = self.api[person].post("activate", {"device_id": device, "duration_s": seconds})
        assert r.status_code == 202, r.text
        return r.json()["activation"]["id"]

    def schedule(self, person: str, device: int) -> int:
        start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
        r = self.api[person].post("schedules", {"device_id": device, "start_time": start, "duration_s": 5})
        assert r.status_code == 201, r.text
        return r.json()["schedule"]["id"]


def _fixed(path: str, body: dict | None = None):
    return lambda ctx, who: (path, body)


def _fresh_email(ctx, who):
    return f"{V1}/register", {"email": f"r{secrets.token_hex(5)}@example.org", "password": "password-123"}


def _login(ctx, who):
    api = ctx.throwaway()
    return f"{V1}/login", {"email": api.email, "password": "password-123"}


def _refresh_body(ctx, who):
    api = ctx.throwaway()
    r = ctx.server.api().post("login", {"email": api.email, "password": "password-123"})
    return None, {"refresh_token": r.json()["refresh_token"]}


def _push_token(ctx, who):
    return f"{V1}/register-push-token", {"token": f"ExponentPushToken[{secrets.token_hex(10)}]"}


def _push_token_delete(ctx, who):
    token = f"ExponentPushToken[{secrets.token_hex(10)}]"
    if who != "anonymous":
        assert ctx.api[who].post("register-push-token", {"token": token}).status_code == 201
    return f"{V1}/push-token?token={token}", None


def _site_a(suffix: str = "", body=None):
    return lambda ctx, who: (f"{V1}/sites/{ctx.site['A']}{suffix}", body(ctx) if callable(body) else body)


def _device_a(template: str, body=None):
    return lambda ctx, who: (template.format(d=ctx.device_a), body)


def _activate(path: str):
    return lambda ctx, who: (path, {"device_id": ctx.device_a, "duration_s": 1})


def _schedule_body(path: str):
    def make(ctx, who):
        start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).isoformat()
        return path, {"device_id": ctx.device_a, "start_time": start, "duration_s": 5}
    return make


def _fresh_schedule(ctx, who):
    return f"{V1}/schedules/{ctx.schedule('operator_a', ctx.device_a)}", None


def _fresh_activation(ctx, who):
    return f"{V1}/activations/{ctx.activate('operator_a', ctx.device_a, 30)}", None


def _member_of_a(ctx, who):
    return f"{V1}/sites/{ctx.site['A']}/members/{ctx.throwaway('A').user_id}", None


def _redeem(ctx, who):
    # Site C: redeeming joins, and the callers' places in A and B must stay as they are.
    r = ctx.admin.post(f"sites/{ctx.site['C']}/invitations", {"role": "viewer"})
    assert r.status_code == 201, r.text
    return f"{V1}/invitations/redeem", {"code": r.json()["code"]}


def _no_other_site(key: str, ids: Callable[[Ctx], tuple[set, set]]):
    """In a list, site B's caller sees none of A's rows and A's callers none of B's."""
    def check(ctx, who, body):
        found = {row["id"] for row in body[key]}
        of_a, of_b = ids(ctx)
        if who == "operator_b":
            assert not found & of_a, (who, found)
        if who in ("manager_a", "operator_a", "viewer_a", "pending"):
            assert not found & of_b, (who, found)
        if who == "admin":
            assert of_a | of_b <= found, (who, found)
    return check


def _audit_of_a_only(ctx, who, body):
    assert body["items"] and {e["site_id"] for e in body["items"]} == {ctx.site["A"]}


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/"): Rule(ALL_200, _fixed("/")),  # the web console's page: public, it holds no data
    ("POST", "/api/v1/register"): Rule(expect(201, 201, 201, 201, 201, 201, 201), _fresh_email),
    ("POST", "/api/v1/login"): Rule(ALL_200, _login),
    ("POST", "/api/v1/refresh-token"): Rule(ALL_200, lambda c, w: (f"{V1}/refresh-token", _refresh_body(c, w)[1])),
    ("POST", "/api/v1/refresh"): Rule(ALL_200, lambda c, w: (f"{V1}/refresh", _refresh_body(c, w)[1])),
    ("POST", "/api/v1/logout"): Rule(ALL_200, lambda c, w: (f"{V1}/logout", _refresh_body(c, w)[1])),
    ("GET", "/api/v1/me"): Rule(LOGGED_IN_200, _fixed(f"{V1}/me")),
    ("GET", "/api/v1/users"): Rule(ADMIN_ONLY, _fixed(f"{V1}/users")),
    ("PATCH", "/api/v1/users/{user_id}"): Rule(ADMIN_ONLY, lambda c, w: (
        f"{V1}/users/{c.throwaway().user_id}", {"daily_quota_minutes": 30})),
    ("DELETE", "/api/v1/users/{user_id}"): Rule(ADMIN_ONLY, lambda c, w: (f"{V1}/users/{c.throwaway().user_id}", None)),
    ("GET", "/api/v1/audit"): Rule(ADMIN_ONLY, _fixed(f"{V1}/audit")),
    ("GET", "/api/v1/devices"): Rule(LOGGED_IN_200, _fixed(f"{V1}/devices"), _no_other_site(
        "devices", lambda c: ({c.device_a}, {c.device_b}))),
    ("POST", "/api/v1/devices"): Rule(expect(201, 403, 403, 403, 403, 403, 401), _fixed(
        f"{V1}/devices", {"name": "Made in the matrix"})),
    ("GET", "/api/v1/devices/{device_id}"): Rule(SITE_READ, _device_a(V1 + "/devices/{d}")),
    ("PATCH", "/api/v1/devices/{device_id}"): Rule(SITE_MANAGE, _device_a(V1 + "/devices/{d}", {"max_run_minutes": 30})),
    ("DELETE", "/api/v1/devices/{device_id}"): Rule(expect(200, 403, 403, 403, 404, 403, 401), lambda c, w: (
        f"{V1}/devices/{c.device_a_fresh()}", None)),
    ("GET", "/api/v1/devices/{device_id}/sessions"): Rule(SITE_READ, _device_a(V1 + "/devices/{d}/sessions")),
    ("GET", "/api/v1/devices/{device_id}/logs"): Rule(SITE_READ, _device_a(V1 + "/devices/{d}/logs")),
    ("POST", "/api/v1/devices/{device_id}/broker-credentials"): Rule(
        SITE_MANAGE_201, _device_a(V1 + "/devices/{d}/broker-credentials", {})),
    ("GET", "/api/v1/device/{device_id}/status"): Rule(SITE_READ, _device_a(V1 + "/device/{d}/status")),
    ("POST", "/api/v1/devices/{device_id}/force-shutdown"): Rule(SITE_MANAGE, _device_a(V1 + "/devices/{d}/force-shutdown", {})),
    ("POST", "/api/v1/device/{device_id}/force-shutdown"): Rule(SITE_MANAGE, _device_a(V1 + "/device/{d}/force-shutdown", {})),
    ("POST", "/api/v1/admin/emergency-stop"): Rule(ADMIN_ONLY, _fixed(f"{V1}/admin/emergency-stop", {})),
    ("POST", "/api/v1/activate"): Rule(SITE_RUN, _activate(f"{V1}/activate")),
    ("POST", "/api/v1/activate-device"): Rule(SITE_RUN, _activate(f"{V1}/activate-device")),
    ("POST", "/api/activate-device"): Rule(SITE_RUN, _activate("/api/activate-device")),
    ("GET", "/api/v1/activations"): Rule(LOGGED_IN_200, _fixed(f"{V1}/activations"), _no_other_site(
        "items", lambda c: ({c.activation_a}, {c.activation_b}))),
    ("GET", "/api/v1/activations/{activation_id}"): Rule(OWNER_READ, lambda c, w: (
        f"{V1}/activations/{c.activation_a}", None)),
    ("DELETE", "/api/v1/activations/{activation_id}"): Rule(OWNER_READ, _fresh_activation),
    ("POST", "/api/v1/schedule"): Rule(expect(201, 201, 201, 403, 404, 403, 401), _schedule_body(f"{V1}/schedule")),
    ("POST", "/api/v1/schedules"): Rule(expect(201, 201, 201, 403, 404, 403, 401), _schedule_body(f"{V1}/schedules")),
    ("GET", "/api/v1/schedules"): Rule(LOGGED_IN_200, _fixed(f"{V1}/schedules"), _no_other_site(
        "items", lambda c: ({c.schedule_a}, {c.schedule_b}))),
    ("GET", "/api/v1/schedules/{schedule_id}"): Rule(OWNER_READ, lambda c, w: (f"{V1}/schedules/{c.schedule_a}", None)),
    ("PATCH", "/api/v1/schedules/{schedule_id}"): Rule(expect(200, 404, 200, 404, 404, 403, 401), lambda c, w: (
        f"{V1}/schedules/{c.schedule_a}", {"enabled": True})),
    ("DELETE", "/api/v1/schedules/{schedule_id}"): Rule(expect(200, 404, 200, 404, 404, 403, 401), _fresh_schedule),
    ("GET", "/api/v1/sites"): Rule(LOGGED_IN_200, _fixed(f"{V1}/sites"), _no_other_site(
        "sites", lambda c: ({c.site["A"]}, {c.site["B"]}))),
    ("POST", "/api/v1/sites"): Rule(expect(201, 403, 403, 403, 403, 403, 401), lambda c, w: (
        f"{V1}/sites", {"name": f"Matrix site {secrets.token_hex(4)}"})),
    ("GET", "/api/v1/sites/{site_id}"): Rule(SITE_READ, _site_a()),
    ("GET", "/api/v1/sites/{site_id}/members"): Rule(SITE_MANAGE, _site_a("/members")),
    ("POST", "/api/v1/sites/{site_id}/members"): Rule(SITE_MANAGE_201, _site_a(
        "/members", lambda c: {"email": c.throwaway().email, "role": "viewer"})),
    ("PATCH", "/api/v1/sites/{site_id}/members/{user_id}"): Rule(SITE_MANAGE, lambda c, w: (
        _member_of_a(c, w)[0], {"role": "viewer"})),
    ("DELETE", "/api/v1/sites/{site_id}/members/{user_id}"): Rule(SITE_MANAGE, _member_of_a),
    ("POST", "/api/v1/sites/{site_id}/invitations"): Rule(SITE_MANAGE_201, _site_a(
        "/invitations", {"role": "viewer"})),
    ("GET", "/api/v1/sites/{site_id}/audit"): Rule(SITE_MANAGE, _site_a("/audit"), lambda c, w, b: _audit_of_a_only(c, w, b)),
    ("POST", "/api/v1/invitations/redeem"): Rule(expect(200, 200, 200, 200, 200, 403, 401), _redeem),
    ("POST", "/api/v1/register-push-token"): Rule(expect(201, 201, 201, 201, 201, 201, 401), _push_token),
    ("DELETE", "/api/v1/push-token"): Rule(LOGGED_IN_200, _push_token_delete),
    ("GET", "/api/v1/ws"): Rule(expect(426, 426, 426, 426, 426, 426, 426), _fixed(f"{V1}/ws")),
    ("GET", "/ws"): Rule(expect(426, 426, 426, 426, 426, 426, 426), _fixed("/ws")),
    ("GET", "/api/v1/openapi.json"): Rule(ALL_200, _fixed(f"{V1}/openapi.json")),
    ("GET", "/api/v1/health"): Rule(ALL_200, _fixed(f"{V1}/health")),
    ("GET", "/api/v1/ready"): Rule(ALL_200, _fixed(f"{V1}/ready")),
    ("GET", "/health"): Rule(ALL_200, _fixed("/health")),
    ("GET", "/ready"): Rule(ALL_200, _fixed("/ready")),
    ("GET", "/metrics"): Rule(ALL_200, _fixed("/metrics")),
}


def router_routes(tmp_path) -> set[tuple[str, str]]:
    app, *_ = build(tmp_path / "routes.db")
    return {(mi.method, info.path) for info in falcon.inspect.inspect_routes(app)
            for mi in info.methods if not mi.internal}


def test_every_route_has_a_rule(tmp_path):
    routes = router_routes(tmp_path)
    missing = sorted(routes - RULES.keys())
    assert not missing, f"routes without an isolation rule (add one to RULES): {missing}"
    assert not sorted(RULES.keys() - routes), "rules for routes that no longer exist"


@pytest.fixture(scope="module")
def ctx(server_factory):
    server = server_factory(PUMPLINK_JOIN_DEFAULT_SITE="false", PUMPLINK_QUEUE_LIMIT="1000",
                            PUMPLINK_DAILY_QUOTA_MINUTES="1000")
    world = World(server)
    yield Ctx(server, world)
    world.close()


# Emergency stop goes last: it ends runs other rules look at.
ORDER = sorted(RULES, key=lambda key: (key == ("POST", "/api/v1/admin/emergency-stop"), key[1], key[0]))


@pytest.mark.parametrize("method,path", ORDER, ids=[f"{m} {p}" for m, p in ORDER])
def test_route_outcome_for_every_caller(ctx, method, path):
    rule = RULES[(method, path)]
    got = {}
    for who in PEOPLE:
        url, body = rule.make(ctx, who)
        r = ctx.api[who].request(method, url, json=body)
        got[who] = r.status_code
        if r.status_code == 500:
            pytest.fail(f"{method} {url} as {who}: 500 {r.text}")
        if r.status_code < 300 and rule.check is not None:
            rule.check(ctx, who, r.json())
        if r.status_code == 404:
            # Out of reach looks exactly like nothing there.
            assert r.json()["code"].endswith("_not_found"), r.text
    assert got == rule.expected, f"{method} {path}"


# --- the live feed ------------------------------------------------------------------------------
def _ws(ctx, who: str, text_mode: bool = False):
    url = ctx.server.base.replace("http://", "ws://") + ("/ws" if text_mode else f"{V1}/ws?format=json")
    ws = websocket.create_connection(url, timeout=5)
    ws.send(ctx.api[who].token or "not a token")
    return ws


def _frames_until(ws, predicate) -> list[dict]:
    seen = []
    while True:
        frame = json.loads(ws.recv())
        seen.append(frame)
        if predicate(frame, seen):
            return seen


def test_websocket_snapshot_and_every_event_type_reach_only_who_may_see_them(ctx):
    people = [p for p in PEOPLE if p != "anonymous"]
    sockets = {who: _ws(ctx, who) for who in people}
    try:
        r = _ws(ctx, "anonymous")
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            r.recv()
            r.recv()
        snapshots = {who: json.loads(ws.recv()) for who, ws in sockets.items()}
        devices = {who: {d["device_id"] for d in s["devices"]} for who, s in snapshots.items()}
        a, b = ctx.device_a, ctx.device_b
        assert {a, b} <= devices["admin"]
        for who in ("manager_a", "operator_a", "viewer_a", "pending"):
            assert a in devices[who] and b not in devices[who], who
        assert b in devices["operator_b"] and a not in devices["operator_b"]

        runs = {ctx.activate("operator_a", a, 1), ctx.activate("operator_b", b, 1)}
        schedules = {ctx.schedule("operator_a", a), ctx.schedule("operator_b", b)}
        # The admin sees everything: once both runs ended and both schedules were made, every
        # event is out; a ping's pong on each other socket comes after what it was sent.
        done = lambda f, seen: (  # noqa: E731
            {x["activation_id"] for x in seen if x["type"] == "activation" and x["state"] == "completed"} >= runs
            and {x["schedule_id"] for x in seen if x["type"] == "schedule"} >= schedules)
        heard = {"admin": _frames_until(sockets["admin"], done)}
        for who in people[1:]:
            sockets[who].send(json.dumps({"type": "ping"}))
            heard[who] = _frames_until(sockets[who], lambda f, seen: f["type"] == "pong")
    finally:
        for ws in sockets.values():
            ws.close()

    def kinds(who):
        return {(f["type"], f["device_id"]) for f in heard[who] if f["type"] in ("device.state", "activation", "schedule")}

    everything = {(t, d) for t in ("device.state", "activation", "schedule") for d in (a, b)}
    assert kinds("admin") >= everything
    assert kinds("operator_a") == {("device.state", a), ("activation", a), ("schedule", a)}
    # The run and schedule are operator A's own: the manager and the viewer see the pump's state.
    assert kinds("manager_a") == {("device.state", a)}
    assert kinds("viewer_a") == {("device.state", a)}
    assert kinds("operator_b") == {("device.state", b), ("activation", b), ("schedule", b)}
    assert kinds("pending") == {("device.state", a)}


def test_the_apps_text_socket_hears_only_a_device_in_its_sites(ctx):
    """The app's socket follows device 1 (the default site's); no one of sites A or B is a member."""
    ctx.world.pump(1)
    sockets = {who: _ws(ctx, who, text_mode=True) for who in ("admin", "operator_a", "operator_b", "pending")}
    try:
        assert sockets["admin"].recv() == "off"
        r = ctx.admin.post("activate", {"device_id": 1, "duration_s": 1})
        assert r.status_code == 202, r.text
        assert sockets["admin"].recv() == "on"
        assert sockets["admin"].recv() == "off"
        for who in ("operator_a", "operator_b", "pending"):
            sockets[who].settimeout(0.5)  # absence can only be shown by waiting a little
            with pytest.raises(websocket.WebSocketTimeoutException):
                sockets[who].recv()
    finally:
        for ws in sockets.values():
            ws.close()
    # Made a member of the default site, the same account's app sees device 1 as before.
    r = ctx.admin.get("sites")
    default = next(s["id"] for s in r.json()["sites"] if s["is_default"])
    r = ctx.admin.post(f"sites/{default}/members", {"email": ctx.api["operator_b"].email, "role": "viewer"})
    assert r.status_code == 201, r.text
    ws = _ws(ctx, "operator_b", text_mode=True)
    try:
        assert ws.recv() == "off"
        # The live feed learnt the new membership too (it had this account's sites in memory).
        r = ctx.admin.post("activate", {"device_id": 1, "duration_s": 1})
        assert r.status_code == 202, r.text
        assert ws.recv() == "on"
        assert ws.recv() == "off"
    finally:
        ws.close()
        ctx.admin.delete(f"sites/{default}/members/{ctx.api['operator_b'].user_id}")


# --- push alerts --------------------------------------------------------------------------------
@pytest.fixture
def notifier_rt(pg_factory, expo):
    db = make_database(pg_factory())
    migrations.migrate(db)
    config = Config(database_url="postgresql://unused", jwt_secret="x" * 40, expo_url=expo.url)
    yield Runtime.build(config, db)
    db.close_all() if hasattr(db, "close_all") else db.close()


def test_every_push_alert_reaches_only_who_may_see_its_device(notifier_rt, expo):
    rt = notifier_rt
    with rt.db.connection_context():
        site = {name: m.Site.create(name=f"Push {name} {secrets.token_hex(3)}").id for name in "AB"}
        device = m.Device.create(name="Pump A", site=site["A"])
        people = {}
        for who, role, where, site_role in (("admin", "admin", None, None), ("manager_a", "user", "A", "manager"),
                                            ("operator_a", "user", "A", "operator"), ("viewer_a", "user", "A", "viewer"),
                                            ("operator_b", "user", "B", "operator"), ("pending", "pending", "A", "operator")):
            people[who] = m.User.create(email=f"{who}{secrets.token_hex(4)}@example.org", password_hash="x", role=role)
            if where is not None:
                m.Membership.create(site=site[where], user=people[who].id, role=site_role)
        tokens = {who: f"ExponentPushToken[{secrets.token_hex(10)}]" for who in people}
        for who, user in people.items():
            m.PushToken.create(token=tokens[who], user=user.id)
    ids = {who: u.id for who, u in people.items()}
    owner_a, owner_b = Audience.user(ids["operator_a"], also_admins=True), Audience.user(ids["operator_b"], also_admins=True)
    # Every alert the server sends, with the audience its publisher gives it, about site A's device.
    cases = {
        "device_on": (Audience.approved(), {"admin", "manager_a", "operator_a", "viewer_a"}),
        "activation_failed": (owner_a, {"admin", "manager_a", "operator_a"}),
        "ack_timeout": (owner_a, {"admin", "manager_a", "operator_a"}),
        "force_shutdown": (Audience.admins(), {"admin", "manager_a"}),
        "schedule_missed": (Audience.user(ids["operator_a"]), {"operator_a"}),
        "off_unconfirmed": (Audience.admins(), {"admin", "manager_a"}),
        "device_flapping": (Audience.admins(), {"admin", "manager_a"}),
        # Site B's operator named on an alert about A's device (a run from before a move) is told nothing.
        "activation_failed_b": (owner_b, {"admin", "manager_a"}),
        "schedule_missed_b": (Audience.user(ids["operator_b"]), set()),
        "pending_owner": (Audience.user(ids["pending"]), set()),
    }
    run = secrets.token_hex(4)
    ref = NotifierActor.start(rt)
    try:
        for case, (audience, _) in cases.items():
            ref.tell(Alert(key=f"iso:{run}:{case}", kind=case.split("_b")[0], device_id=device.id, title="t",
                           body="b", audience=audience))
        # Not about a device: only the account named (the push token moved away from it).
        ref.tell(Alert(key=f"iso:{run}:moved", kind="push_token_moved", device_id=None, title="t", body="b",
                       audience=Audience.user(ids["operator_b"])))
        expo.wait_for(lambda f: f.for_event(f"iso:{run}:moved"), what="the last alert")
    finally:
        ref.stop()
    by_token = {t: who for who, t in tokens.items()}
    for case, (_, expected) in cases.items():
        told = {by_token[msg["to"]] for msg in expo.for_event(f"iso:{run}:{case}")}
        assert told == expected, (case, told)
    assert {by_token[msg["to"]] for msg in expo.for_event(f"iso:{run}:moved")} == {"operator_b"}
