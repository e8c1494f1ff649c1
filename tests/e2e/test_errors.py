"""Every error a client can provoke is an honest 4xx with a ``{"error", "code"}`` body; never a 500."""

from __future__ import annotations

import itertools
import json

import pytest
import requests

from tests.conftest import ADMIN

MIB = 1024 * 1024
NO_SUCH_ID = 2**31 - 1  # a valid id that exists nowhere: bodies are validated, nothing is changed


def raw(server, method: str, path: str, body: bytes | None = None, token: str | None = None, **headers):
    """A request with exactly these bytes, on its own connection."""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    headers.setdefault("Content-Type", "application/json")
    headers.setdefault("Connection", "close")
    url = path if path.startswith("/") else f"/api/v1/{path}"
    return requests.request(method, server.base + url, data=body, headers=headers, timeout=15)


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, f"{r.request.method} {r.url}: {r.status_code} {r.text[:300]}"
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"].strip(), body
    assert isinstance(body.get("code"), str) and body["code"].replace("_", "").isalnum(), body
    assert "Traceback" not in r.text
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture(scope="module")
def admin_token(server):
    r = server.api().post("login", {"email": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


@pytest.mark.parametrize("body, code", [
    (b'{"email": "a@example.org", ', "malformed_json"),
    (b"{'email': 'single quotes'}", "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    (b'{"email": NaN, "password": "x"}', "malformed_json"),
    (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # deeper than any parser should follow
    (b'[{"email": "a@example.org"}]', "body_not_object"),
    (b'"a string"', "body_not_object"),
])
def test_malformed_bodies_are_400(server, body, code):
    assert_error(raw(server, "POST", "login", body), 400, code)


def test_wrong_types_are_400_and_name_the_field(server, admin_token):
    body = assert_error(raw(server, "POST", "login", json.dumps({"email": 123, "password": "x"}).encode()), 400)
    assert body["field"] == "email"
    body = assert_error(raw(server, "POST", "register", json.dumps({"email": "a@example.org"}).encode()), 400,
                        "missing_field")
    assert body["field"] == "password"
    body = assert_error(raw(server, "PATCH", f"users/{NO_SUCH_ID}", json.dumps({"daily_quota_minutes": "ten"}).encode(),
                            admin_token), 400)
    assert body["field"].startswith("daily_quota_minutes")
    assert_error(raw(server, "POST", "activate", json.dumps({"device_id": "1", "duration": 1}).encode(), admin_token), 400)
    assert_error(raw(server, "GET", "users?limit=abc", token=admin_token), 400)
    assert_error(raw(server, "POST", "refresh-token", json.dumps({"refresh_token": ["a"]}).encode()), 400)
    # PostgreSQL cannot store NUL; it is refused up front rather than failing in the driver.
    assert_error(raw(server, "POST", "devices", json.dumps({"name": "a\u0000b"}).encode(), admin_token), 400,
                 "nul_character")


def test_values_out_of_range_are_422(server, admin_token):
    patch = f"users/{NO_SUCH_ID}"
    assert_error(raw(server, "PATCH", patch, json.dumps({"role": "boss"}).encode(), admin_token), 422)
    assert_error(raw(server, "PATCH", patch, json.dumps({"daily_quota_minutes": 0}).encode(), admin_token), 422)
    assert_error(raw(server, "PATCH", patch, b'{"daily_quota_minutes": 1e400}', admin_token), 422)
    assert_error(raw(server, "POST", "activate", json.dumps({"device_id": 1, "duration": -5}).encode(), admin_token), 422)
    assert_error(raw(server, "GET", "users?limit=0", token=admin_token), 422)
    assert_error(raw(server, "GET", "audit?offset=-1", token=admin_token), 422)
    assert_error(raw(server, "POST", "register", json.dumps({"email": "x" * 300, "password": "p" * 10}).encode()), 422)
    # An explicit null for a column that cannot be empty is a wrong type, not a database error.
    for field, status in (("name", 400), ("protocol", 422), ("max_run_minutes", 400)):
        body = assert_error(raw(server, "PATCH", "devices/1", json.dumps({field: None}).encode(), admin_token), status)
        assert body["field"].split(".")[0] == field
    # The body was valid but names nothing that exists.
    assert_error(raw(server, "PATCH", patch, json.dumps({"role": "user"}).encode(), admin_token), 404, "user_not_found")


def test_unknown_routes_and_ids_are_404(server, admin_token):
    assert_error(raw(server, "GET", "no-such-thing", token=admin_token), 404, "not_found")
    assert_error(raw(server, "GET", "/no/such/path"), 404, "not_found")
    assert_error(raw(server, "PATCH", "users/abc", b"{}", admin_token), 404)
    assert_error(raw(server, "DELETE", "users/99999999999999", token=admin_token), 404)
    assert_error(raw(server, "DELETE", f"users/{NO_SUCH_ID}", token=admin_token), 404, "user_not_found")


def test_wrong_method_is_405_with_allow(server):
    r = raw(server, "DELETE", "login")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    assert_error(raw(server, "PUT", "health"), 405, "method_not_allowed")


def test_body_over_one_mib_is_413_with_content_length(server):
    body = json.dumps({"email": "a@example.org", "password": "x" * MIB}).encode()
    r = raw(server, "POST", "login", body)
    assert int(r.request.headers["Content-Length"]) > MIB
    assert_error(r, 413, "body_too_large")
    assert_error(raw(server, "POST", "register", b" " * (MIB + 1)), 413, "body_too_large")


def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_body_over_one_mib_is_413_when_chunked(server):
    body = json.dumps({"email": "a@example.org", "password": "x" * MIB}).encode()
    r = raw(server, "POST", "login", _chunks(body))
    assert r.request.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.request.headers
    assert_error(r, 413, "body_too_large")


def test_a_chunked_body_is_read_like_any_other(server):
    body = json.dumps({"email": ADMIN[0], "password": ADMIN[1]}).encode()
    r = raw(server, "POST", "login", _chunks(body, 7))
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 200, r.text
    assert r.json()["access_token"]


def test_no_bad_body_gets_a_500_anywhere(world, admin_token):
    """A sweep of hostile bodies over every endpoint that reads one."""
    server = world.server
    device_id = world.device("Sweep pump")
    targets = [
        ("POST", "register"), ("POST", "login"), ("POST", "refresh-token"), ("POST", "logout"),
        ("PATCH", f"users/{NO_SUCH_ID}"), ("POST", "activate"), ("POST", "/api/activate-device"),
        ("POST", "devices"), ("PATCH", f"devices/{device_id}"), ("POST", f"device/{device_id}/force-shutdown"),
        ("POST", "schedule"), ("POST", "schedules"), ("PATCH", f"schedules/{NO_SUCH_ID}"),
        ("POST", "register-push-token"), ("DELETE", "push-token"),
    ]
    bodies = [
        b"{", b"[]", b"null", b"1e999", b"\xff\xfe", b"[" * 5000, b'{"duration": Infinity}',
        json.dumps({"device_id": 10**30, "duration": 1}).encode(),
        json.dumps({"device_id": 2**40, "duration_s": 1}).encode(),
        json.dumps({"device_id": True, "duration": True}).encode(),
        json.dumps({"device_id": 1e300, "duration": 1}).encode(),
        b'{"device_id": %d, "duration_s": 1e400}' % device_id,
        json.dumps({"email": None, "password": None, "refresh_token": None, "token": None}).encode(),
        json.dumps({"email": "a@example.org", "password": "x" * 2000}).encode(),
        json.dumps({"name": "x" * 100_000, "token": "x" * 5000}).encode(),
        json.dumps({"name": "a\u0000b", "email": "a\u0000@example.org"}).encode(),
        json.dumps({"role": 5, "enabled": "yes", "protocol": "smoke-signals"}).encode(),
        json.dumps({"daily_quota_minutes": -1, "max_run_minutes": 1e308}).encode(),
        json.dumps({"device_id": device_id, "start_time": "not a date", "duration": 1}).encode(),
        json.dumps({"device_id": device_id, "start_time": "99999-01-01T06:00:00Z", "duration": 1}).encode(),
        json.dumps({"device_id": device_id, "start_time": "2030-01-01T06:00:00Z", "duration": 1,
                    "rrule": "FREQ=NONSENSE"}).encode(),
    ]
    failures = []
    for (method, path), body in itertools.product(targets, bodies):
        r = raw(server, method, path, body, admin_token)
        if r.status_code >= 500:
            failures.append(f"{method} {path} {body[:60]!r}: {r.status_code} {r.text[:120]}")
        elif r.status_code >= 400:
            shape = r.json()
            if not (isinstance(shape, dict) and shape.get("error") and shape.get("code")):
                failures.append(f"{method} {path} {body[:60]!r}: {r.status_code} without error/code: {r.text[:120]}")
    assert not failures, "\n".join(failures)
    assert "error" not in world.admin.get(f"devices/{device_id}").json()  # the server is still fine


def test_health_and_ready(server):
    for path in ("health", "/health"):
        r = raw(server, "GET", path)
        assert r.status_code == 200 and r.json()["status"] == "ok"
    for path in ("ready", "/ready"):
        r = raw(server, "GET", path)
        assert r.status_code == 200, r.text
        # A single node's /ready is exactly this: no cluster section (that is cluster mode's).
        assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


@pytest.mark.parametrize("path, code", [
    ("activations?state=%00", "nul_character"),
    ("activations?state=a%00b", "nul_character"),
    ("activations?device_id=%00", "nul_character"),
    ("users?limit=%01", "control_character"),
    ("audit?x%00y=1", "nul_character"),  # names too, and parameters no route declares
    ("health?probe=%1b[2J", "control_character"),
])
def test_nul_and_control_characters_in_a_query_are_400(server, admin_token, path, code):
    body = assert_error(raw(server, "GET", path, token=admin_token), 400, code)
    assert body["field"]


def test_nul_in_the_push_token_query_is_400(world):
    user = world.user()
    assert_error(raw(world.server, "DELETE", "push-token?token=%00", token=user.token), 400, "nul_character")
    assert_error(raw(world.server, "DELETE", "push-token?token=ExponentPushToken[a%00]", token=user.token), 400,
                 "nul_character")


@pytest.mark.parametrize("query", [
    "since=9999-12-31T23:59:59-12:00",
    "until=0001-01-01T00:00:00%2B05:00",
    "since=9999-12-31T23:59:59",  # no zone: the server's is added, which must not overflow either
    "until=0001-01-01T00:00:00",
    "since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
])
def test_dates_that_cannot_be_stored_are_422_on_every_listing(world, admin_token, query):
    device_id = world.device("Dates pump")
    for listing in ("activations", f"devices/{device_id}/sessions", f"devices/{device_id}/logs"):
        body = assert_error(raw(world.server, "GET", f"{listing}?{query}", token=admin_token), 422, "invalid_value")
        assert body["field"] in ("since", "until"), body
    # The widest dates that fit are answered.
    for listing in ("activations", f"devices/{device_id}/sessions", f"devices/{device_id}/logs"):
        r = raw(world.server, "GET", f"{listing}?since=0001-01-02T00:00:00%2B12:00&until=9999-12-30T23:00:00-12:00",
                token=admin_token)
        assert r.status_code == 200, r.text
