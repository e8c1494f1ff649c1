"""The internal endpoint of a real node in cluster mode, called as another node would call it.

It refuses whatever is not signed with the cluster secret, fresh and new; a signed call runs on the
node's own actor, re-authorized there, and answers what the public API answers.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
import requests

from pumplink.cluster import signing
from pumplink.cluster.forward import PATH, Forwarder
from pumplink.errors import PumpLinkError
from tests.cluster.nodes import running_cluster
from tests.conftest import World
from tests.support import wait_until

SECRET = secrets.token_urlsafe(48)


@pytest.fixture(scope="module")
def node(pg_factory, zookeeper, run_tag, log_dir):
    """One node in cluster mode (it owns every partition)."""
    with running_cluster(["node-a"], database=pg_factory(), zookeeper=zookeeper, run_tag=run_tag, log_dir=log_dir,
                         routing=False, secret=SECRET) as (nodes, _):
        yield nodes[0]


@pytest.fixture
def world(node):
    w = World(node)
    yield w
    w.close()


def body(op, user_id, **args) -> bytes:
    return json.dumps({"op": op, "user_id": user_id, "args": args}).encode()


def post(node, raw: bytes, headers: dict) -> requests.Response:
    return requests.post(node.base + PATH, data=raw, headers={"Content-Type": "application/json", **headers}, timeout=10)


def test_unsigned_wrong_stale_or_replayed_calls_are_refused_and_do_nothing(node, world):
    device_id = world.device("Guarded pump")
    pump = world.pump(device_id)
    user = world.user()
    raw = body("activate", user.user_id, device_id=device_id, duration_s=2)
    good = signing.sign(SECRET, "node-b", "POST", PATH, raw)
    cases = {
        "cluster_signature_missing": {},
        "cluster_signature_invalid": signing.sign(secrets.token_urlsafe(48), "node-b", "POST", PATH, raw),
        "cluster_signature_stale": signing.sign(SECRET, "node-b", "POST", PATH, raw, now=time.time() - 120),
    }
    for code, headers in cases.items():
        r = post(node, raw, headers)
        assert (r.status_code, r.json()["code"]) == (401, code), r.text
    # A valid signature over another body (a longer run) is not a signature of this one.
    r = post(node, body("activate", user.user_id, device_id=device_id, duration_s=60), good)
    assert (r.status_code, r.json()["code"]) == (401, "cluster_signature_invalid")
    assert user.get("activations", params={"device_id": device_id}).json()["items"] == []
    assert pump.commands == []

    r = post(node, raw, good)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["device_id"] == device_id
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    r = post(node, raw, good)  # the same signed call again
    assert (r.status_code, r.json()["code"]) == (401, "cluster_signature_replayed")
    assert len(user.get("activations", params={"device_id": device_id}).json()["items"]) == 1
    metrics = requests.get(node.base + "/metrics", timeout=5).text
    assert 'pumplink_forwarded_served_total{outcome="refused"} 5.0' in metrics
    assert 'pumplink_forwarded_served_total{outcome="ok"}' in metrics


def test_a_forwarded_activation_starts_the_pump_and_answers_as_the_public_api(node, world):
    device_id = world.device("Forwarded pump")
    pump = world.pump(device_id)
    user = world.user()
    wait_until(lambda: user.get(f"devices/{device_id}").json()["state"] == "off", what="device off")
    forwarder = Forwarder("node-b", SECRET)

    activation = forwarder.call(node.base, "activate", user.user_id, device_id=device_id, duration_s=2)
    assert activation["device_id"] == device_id and activation["user_id"] == user.user_id
    cmd = pump.wait_for(lambda p: p.commands and p.commands[0], what="ON command")
    assert cmd["action"] == "on" and cmd["duration_s"] == 2
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    pump.wait_for(lambda p: p.state == "off", timeout=6, what="pump off")
    done = wait_until(lambda: (a := user.get(f"activations/{activation['id']}").json())["state"] == "completed" and a,
                      what="activation completed")
    assert done["user_id"] == user.user_id
    # At rest, the owner's forwarded views of the device are the public ones.
    assert forwarder.call(node.base, "device", None, device_id=device_id) == user.get(f"devices/{device_id}").json()
    assert forwarder.call(node.base, "go_status", None, device_id=device_id) == user.get(
        f"device/{device_id}/status").json()
    assert forwarder.call(node.base, "views", None, device_ids=[device_id]) == [
        d for d in user.get("devices").json()["devices"] if d["id"] == device_id]


def test_errors_come_back_as_the_public_api_writes_them(node, world):
    device_id = world.device("Short pump", max_run_minutes=1)
    user = world.user()
    pending = world.user("pending")
    forwarder = Forwarder("node-b", SECRET)
    cases = [
        (user, {"device_id": device_id, "duration_s": 3600}),  # past the device's max run: 422
        (user, {"device_id": 2_000_000, "duration_s": 2}),  # no such device: 404
        (pending, {"device_id": device_id, "duration_s": 2}),  # not approved: 403, re-checked by the owner
    ]
    for who, args in cases:
        public = who.post("activate", args)
        with pytest.raises(PumpLinkError) as forwarded:
            forwarder.call(node.base, "activate", who.user_id, **args)
        error = forwarded.value
        assert public.status_code in (403, 404, 422)
        assert (error.status, {"error": error.message, "code": error.code, **error.extra}) == (
            public.status_code, public.json())


def test_a_single_node_has_no_internal_endpoint(server):
    raw = body("activate", 1, device_id=1, duration_s=2)
    r = post(server, raw, signing.sign(SECRET, "node-b", "POST", PATH, raw))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
