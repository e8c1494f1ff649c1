"""Hostile values on every query parameter of every route: never a 5xx (issue 10, finding 11).

The routes and their parameters come from the server's own OpenAPI document, which is built
from the router (a test in test_schemathesis/openapi checks nothing is missing), so a new route
or parameter is covered without editing this file. Besides its declared parameters, every
operation also gets one parameter nobody declares: NUL and control characters are refused
on every route, whatever the name.
"""

from __future__ import annotations

import collections
import re
from urllib.parse import quote

import pytest
import requests

from tests.conftest import ADMIN, World

NO_SUCH_ID = 2**31 - 1
REFUSED = {"\x00": "nul_character", "a\x00b": "nul_character", "\x01": "control_character",
           "\x1b[2J": "control_character", "line\nbreak": "control_character", "\x7f": "control_character"}
HOSTILE = [
    # dates that overflow on their way to UTC or out of the storable range
    "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59", "0001-01-01",
    "99999-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T25:00:00Z", "1e400", "-1e400",
    # numbers too big, negative, not numbers, or digits Python's int() would accept
    "9" * 400, "-" + "9" * 40, str(2**31), str(2**63), "-1", "0", "1.5", "NaN", "inf", "0x10", "1_000",
    "²", "١٢", "Ⅻ", "١", " 1 ", "",
    # odd text
    "true", "null", "[]", "{}", "%", "%%00", "😀", "é" * 100, "' OR 1=1 --", "<script>", "x" * 2000,
]


def operations(spec: dict):
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            query = [p["name"] for p in op.get("parameters", ()) if p["in"] == "query"]
            yield path, method.upper(), query


def fill(path: str, device_id: int) -> str:
    return re.sub(r"{(\w+)}", lambda m: str(device_id if m.group(1) == "device_id" else NO_SUCH_ID), path)


@pytest.fixture(scope="module")
def fuzz(server_factory):
    """A server of its own (POST routes run for real with whatever a hostile query leaves them)."""
    server = server_factory()
    world = World(server)
    device_id = world.device("Query fuzz pump")
    spec = requests.get(f"{server.base}/api/v1/openapi.json", timeout=10).json()
    yield server, world.admin.token, device_id, spec
    world.close()


def send(server, token, method, path, query: str) -> requests.Response:
    return requests.request(method, f"{server.base}{path}?{query}", headers={
        "Authorization": f"Bearer {token}", "Connection": "close"}, timeout=15)


def test_every_route_declares_what_it_reads(fuzz):
    server, token, device_id, spec = fuzz
    declared = {(path, method): query for path, method, query in operations(spec)}
    assert len(declared) >= 30
    # The listings read more than paging; each parameter they read is in the document.
    assert {"limit", "offset", "since", "until", "state", "mine", "device_id"} <= set(
        declared[("/api/v1/activations", "GET")])
    assert {"limit", "offset", "mine", "device_id", "enabled"} <= set(declared[("/api/v1/schedules", "GET")])
    assert {"since", "until"} <= set(declared[("/api/v1/devices/{device_id}/sessions", "GET")])
    assert "token" in declared[("/api/v1/push-token", "DELETE")]


def test_nul_and_control_characters_are_400_on_every_parameter_of_every_route(fuzz):
    server, token, device_id, spec = fuzz
    statuses, failures = collections.Counter(), []
    for path, method, query in operations(spec):
        for name in [*query, "undeclared"]:
            for value, code in REFUSED.items():
                r = send(server, token, method, fill(path, device_id), f"{name}={quote(value, safe='')}")
                statuses[r.status_code] += 1
                body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
                if r.status_code != 400 or body.get("code") != code:
                    failures.append(f"{method} {path} {name}={value!r}: {r.status_code} {r.text[:150]}")
    print(f"NUL/control sweep: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(failures[:20])


def test_hostile_values_on_every_declared_parameter_get_no_5xx(fuzz):
    server, token, device_id, spec = fuzz
    statuses, failures, tried = collections.Counter(), [], 0
    for path, method, query in operations(spec):
        for name in query:
            for value in HOSTILE:
                tried += 1
                r = send(server, token, method, fill(path, device_id), f"{name}={quote(value, safe='')}")
                statuses[r.status_code] += 1
                if r.status_code >= 500:
                    failures.append(f"{method} {path} {name}={value[:40]!r}: {r.status_code} {r.text[:150]}")
                elif r.status_code >= 400:
                    body = r.json()
                    if not (body.get("error") and body.get("code")):
                        failures.append(f"{method} {path} {name}={value[:40]!r}: {r.status_code} {r.text[:150]}")
        # Every declared parameter hostile at once, and repeated (a list where one value is expected).
        if query:
            everything = "&".join(f"{n}={quote(v, safe='')}" for n in query for v in ("9" * 50, "-1"))
            r = send(server, token, method, fill(path, device_id), everything)
            statuses[r.status_code] += 1
            tried += 1
            if r.status_code >= 500:
                failures.append(f"{method} {path} all at once: {r.status_code} {r.text[:150]}")
    fives = sum(n for status, n in statuses.items() if status >= 500)
    print(f"hostile query sweep: {tried} requests, {fives} 5xx, statuses {dict(sorted(statuses.items()))}")
    assert tried >= 200
    assert not failures, "\n".join(failures[:20])
    r = requests.post(f"{server.base}/api/v1/login", json={"email": ADMIN[0], "password": ADMIN[1]}, timeout=10)
    assert r.status_code == 200  # and the server is still fine


def test_a_query_longer_than_the_request_line_limit_is_414_with_a_body(fuzz):
    server, token, device_id, spec = fuzz
    r = send(server, token, "GET", "/api/v1/activations", "state=" + "x" * 9000)
    assert r.status_code == 414 and r.json()["code"] == "uri_too_long"
