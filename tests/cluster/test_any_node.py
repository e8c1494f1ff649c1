"""Any node answers any request: two real `pumplink serve` nodes on one ZooKeeper, PostgreSQL,
broker topic prefix and simulated pumps. A call for a device owned by the other node is
forwarded there and answers as the owner; live events cross nodes, filtered as on one node."""

from __future__ import annotations

import secrets

import pytest
import requests

from pumplink.cluster.partitions import partition_of
from tests.cluster.nodes import WAIT_S, running_cluster
from tests.conftest import World
from tests.e2e.test_ws import connect, recv_json, recv_until, ws_url
from tests.support import Server, wait_until

# Several server processes: `make test` leaves them out, `make test-cluster` runs them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(pg_factory, zookeeper, run_tag, log_dir):
    """Two nodes sharing everything but their names and ports; both own half the partitions."""
    with running_cluster(["node-a", "node-b"], database=pg_factory(), zookeeper=zookeeper, run_tag=run_tag,
                         log_dir=log_dir) as (nodes, owners):
        yield nodes, owners


@pytest.fixture
def two(cluster):
    (a, b), owners = cluster
    world = World(a)
    yield a, b, owners, world
    world.close()


def device_owned_by(world: World, owners, node: str, **fields) -> int:
    """A new device (created through node a) whose partition ``node`` owns."""
    for _ in range(40):
        device_id = world.device(f"Pump {secrets.token_hex(2)}", **fields)
        owner = owners()[partition_of(device_id)]
        if owner is not None and owner["node"] == node:
            return device_id
    raise AssertionError(f"no device landed on {node}")


def api_on(node: Server, api):
    return node.api(api.token)


def metric(node: Server, line_start: str) -> float:
    for line in requests.get(node.base + "/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def forwarded(node: Server) -> dict:
    """/ready's counts of forwarded calls: ``{"sent": {outcome: n}, "received": {outcome: n}}``."""
    return requests.get(node.base + "/api/v1/ready", timeout=5).json()["cluster"]["forwarded"]


def test_an_activation_through_the_other_node_starts_the_pump_and_answers_as_the_owner(two):
    a, b, owners, world = two
    device_id = device_owned_by(world, owners, "node-b")
    pump = world.pump(device_id)
    user = world.user()
    on_a, on_b = api_on(a, user), api_on(b, user)
    wait_until(lambda: on_a.get(f"devices/{device_id}").json().get("state") == "off", what="device off, seen on a")
    sent, received = forwarded(a)["sent"], forwarded(b)["received"]

    r = on_a.post("activate", {"device_id": device_id, "duration_s": 2})
    assert r.status_code == 202, r.text
    # /ready shows it: one more call sent by a and served by b, both "ok".
    assert forwarded(a)["sent"] == {**sent, "ok": sent["ok"] + 1}
    assert forwarded(b)["received"] == {**received, "ok": received["ok"] + 1}
    activation = r.json()["activation"]
    cmd = pump.wait_for(lambda p: p.commands and p.commands[0], what="ON command")
    assert cmd["action"] == "on" and cmd["duration_s"] == 2
    pump.wait_for(lambda p: p.state == "on", what="pump on")
    assert activation["device_id"] == device_id and activation["user_id"] == user.user_id
    assert metric(a, 'pumplink_forwarded_requests_total{op="activate",outcome="ok"}') >= 1
    # A second run is queued by the owner's actor, whichever node it is sent to.
    queued = on_a.post("activate", {"device_id": device_id, "duration_s": 1})
    assert queued.status_code == 202 and queued.json()["activation"]["state"] == "queued", queued.text
    cancelled = on_a.delete(f"activations/{queued.json()['activation']['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["activation"]["state"] == "cancelled", cancelled.text

    pump.wait_for(lambda p: p.state == "off", timeout=6, what="pump off")
    wait_until(lambda: on_b.get(f"activations/{activation['id']}").json()["state"] == "completed",
               what="activation completed")
    # At rest, both nodes give the same answers for the device, its status and the list.
    for path in (f"devices/{device_id}", f"device/{device_id}/status"):
        assert on_a.get(path).json() == on_b.get(path).json()
    listed = [on.get("devices").json()["devices"] for on in (on_a, on_b)]
    assert listed[0] == listed[1] and device_id in {d["id"] for d in listed[0]}
    # Errors too: the owner's refusal, passed on unchanged.
    too_long = {"device_id": device_id, "duration_s": 10 ** 6}
    ra, rb = on_a.post("activate", too_long), on_b.post("activate", too_long)
    assert (ra.status_code, ra.json()) == (rb.status_code, rb.json()) and ra.status_code == 422
    # An error of the owner's actor counts as such on both sides of /ready: the ended run's cancel.
    sent, received = forwarded(a)["sent"], forwarded(b)["received"]
    r = on_a.delete(f"activations/{activation['id']}")
    assert r.status_code == 409 and r.json()["code"] == "activation_ended", r.text
    assert forwarded(a)["sent"] == {**sent, "error": sent["error"] + 1}
    assert forwarded(b)["received"] == {**received, "error": received["error"] + 1}


def test_a_websocket_client_on_one_node_sees_a_device_of_the_other(two):
    a, b, owners, world = two
    device_id = device_owned_by(world, owners, "node-b")
    world.pump(device_id)
    user = world.user()
    wait_until(lambda: api_on(b, user).get(f"devices/{device_id}").json().get("state") == "off", what="device off")
    ws = connect(ws_url(a), token=user.token, timeout=10)
    snapshot = recv_json(ws)
    assert snapshot["type"] == "snapshot" and device_id in {d["device_id"] for d in snapshot["devices"]}
    r = api_on(b, user).post("activate", {"device_id": device_id, "duration_s": 1})
    assert r.status_code == 202, r.text
    on, _ = recv_until(ws, lambda m: m["type"] == "device.state" and m["device_id"] == device_id and m["state"] == "on")
    assert on["activation_id"] == r.json()["activation"]["id"]
    done, _ = recv_until(ws, lambda m: m["type"] == "activation" and m["state"] == "completed")
    assert done["device_id"] == device_id
    ws.close()


def test_a_viewer_gets_no_events_of_a_device_it_may_not_see_from_either_node(two):
    a, b, owners, world = two
    site = world.admin.post("sites", {"name": f"Private {secrets.token_hex(3)}"})
    assert site.status_code == 201, site.text
    hidden = device_owned_by(world, owners, "node-b", site_id=site.json()["id"])
    sentinel = device_owned_by(world, owners, "node-b")
    pumps = {d: world.pump(d) for d in (hidden, sentinel)}
    user = world.user()
    admin_b = api_on(b, world.admin)
    wait_until(lambda: all(admin_b.get(f"devices/{d}").json().get("state") == "off" for d in pumps), what="both off")
    ws, ws_admin = (connect(ws_url(a), token=api.token, timeout=10) for api in (user, world.admin))
    assert recv_json(ws)["type"] == recv_json(ws_admin)["type"] == "snapshot"
    assert admin_b.post("activate", {"device_id": hidden, "duration_s": 1}).status_code == 202
    # Once its owner shows the hidden device on, its event is in the owner's broadcaster, which
    # relays in order: everything about it has crossed once the sentinel's next change has.
    wait_until(lambda: admin_b.get(f"devices/{hidden}").json()["state"] == "on", what="hidden device on")
    pumps[sentinel].manual("on")
    last, before = recv_until(ws, lambda m: m["type"] == "device.state" and m["device_id"] == sentinel)
    assert last["state"] == "on"
    assert [f for f in before if f.get("device_id") == hidden] == []
    # The admin on the same node did get them: the events did cross.
    last, before = recv_until(ws_admin, lambda m: m["type"] == "device.state" and m["device_id"] == sentinel)
    assert any(f["type"] == "device.state" and f["device_id"] == hidden and f["state"] == "on" for f in before)
    pumps[sentinel].manual("off")
    ws.close()
    ws_admin.close()


def test_schedules_shutdowns_changes_and_the_emergency_stop_reach_the_owner(two):
    import datetime as dt

    a, b, owners, world = two
    mine, theirs = device_owned_by(world, owners, "node-a"), device_owned_by(world, owners, "node-b")
    pumps = {d: world.pump(d) for d in (mine, theirs)}
    user = world.user()
    on_a, admin_a = api_on(a, user), api_on(a, world.admin)
    wait_until(lambda: all(on_a.get(f"devices/{d}").json().get("state") == "off" for d in pumps), what="both off")

    # A schedule made through a for b's device is planned and fired by b.
    start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)).isoformat(timespec="milliseconds")
    r = on_a.post("schedules", {"device_id": theirs, "start_time": start, "duration_s": 30})
    assert r.status_code == 201, r.text
    schedule_id = r.json()["schedule"]["id"]
    pumps[theirs].wait_for(lambda p: p.state == "on", timeout=8, what="scheduled run on b's pump")
    r = on_a.patch(f"schedules/{schedule_id}", {"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False, r.text
    # Force shutdown through a of b's running device.
    r = admin_a.post(f"devices/{theirs}/force-shutdown", {})
    assert r.status_code == 200 and r.json()["device_id"] == theirs, r.text
    pumps[theirs].wait_for(lambda p: p.state == "off", timeout=3, what="b's pump off")
    # A change through a reaches b's actor.
    r = admin_a.patch(f"devices/{theirs}", {"name": "Renamed on b"})
    assert r.status_code == 200 and r.json()["name"] == "Renamed on b", r.text
    assert api_on(b, user).get(f"devices/{theirs}").json()["name"] == "Renamed on b"

    # The emergency stop through a stops the pumps of both nodes and lists every device.
    for d in pumps:
        assert on_a.post("activate", {"device_id": d, "duration_s": 30}).status_code == 202
    for pump in pumps.values():
        pump.wait_for(lambda p: p.state == "on", what="pump on")
    r = admin_a.post("admin/emergency-stop", {})
    assert r.status_code == 200, r.text
    assert set(pumps) <= {d["device_id"] for d in r.json()["devices"]}
    for pump in pumps.values():
        pump.wait_for(lambda p: p.state == "off", timeout=3, what="pump off after emergency stop")
    assert admin_a.delete(f"devices/{theirs}").status_code == 200
    assert api_on(b, world.admin).get(f"devices/{theirs}").status_code == 404


def test_a_restart_of_the_other_node_shows_clients_nothing_but_retryable_503s(two):
    """Node b restarts (SIGTERM: a planned handover, then it joins again) while a client keeps
    asking node a for devices of both nodes: every answer is a success or a 503 with Retry-After."""
    import collections
    import threading
    import time

    a, b, owners, world = two
    devices = [device_owned_by(world, owners, "node-a"), device_owned_by(world, owners, "node-b")]
    for d in devices:
        world.pump(d)
    user = world.user()
    on_a = api_on(a, user)
    wait_until(lambda: all(on_a.get(f"devices/{d}").json().get("state") == "off" for d in devices), what="both off")
    seen: collections.Counter = collections.Counter()
    wrong: list = []
    stop = threading.Event()

    def client():
        n, last_run = 0, {d: 0.0 for d in devices}
        while not stop.is_set():
            device_id = devices[n % 2]
            if time.monotonic() - last_run[device_id] > 3:  # a 1 s run now and then: the queue never fills
                last_run[device_id] = time.monotonic()
                r = on_a.post("activate", {"device_id": device_id, "duration_s": 1})
            else:
                r = on_a.get(("devices", f"devices/{device_id}", f"device/{device_id}/status")[n % 3])
            n += 1
            code = r.json().get("code", "") if r.status_code >= 400 else ""
            seen[(r.status_code, code)] += 1
            if not (r.status_code in (200, 202) or (r.status_code == 503 and r.headers.get("Retry-After"))):
                wrong.append((r.status_code, r.text))
            time.sleep(0.05)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_until(lambda: sum(seen.values()) > 20, what="the client under way")
        b.stop()  # SIGTERM
        wait_until(lambda: {o["node"] for o in owners().values() if o} == {"node-a"}, timeout=WAIT_S,
                   what="a owns everything")
        b.start()
        wait_until(lambda: {o["node"] for o in owners().values() if o} == {"node-a", "node-b"}, timeout=WAIT_S,
                   what="b owns partitions again")
        served = sum(seen.values())
        wait_until(lambda: sum(seen.values()) > served + 20, what="more answers after the restart")
    finally:
        stop.set()
        thread.join(10)
    assert wrong == [], (wrong[:5], seen)
    assert seen[(200, "")] > 0 and seen[(202, "")] > 0, seen
    print("answers during b's restart:", dict(seen))


def test_while_a_dead_nodes_partitions_have_no_owner_calls_are_a_retryable_503(two):
    """Last in the module: it kills node b (and starts it again)."""
    a, b, owners, world = two
    device_id = device_owned_by(world, owners, "node-b")
    pump = world.pump(device_id)
    user = world.user()
    on_a = api_on(a, user)
    wait_until(lambda: on_a.get(f"devices/{device_id}").json().get("state") == "off", what="device off")
    b.kill()
    # Until ZooKeeper expires b's session (4 s) b still holds the partition, then a recovers it.
    answers = []

    def activated():
        r = on_a.post("activate", {"device_id": device_id, "duration_s": 1})
        answers.append(r)
        return r.status_code == 202

    wait_until(activated, timeout=4 + 3 + 5, interval=0.2, what="an activation through a accepted")
    refused = answers[:-1]
    assert refused, "b's partition was taken over before its session could expire"
    for r in refused:
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
        assert r.json()["code"] in ("owner_unreachable", "partition_moving"), r.text
    pump.wait_for(lambda p: p.state == "on", what="pump on, commanded by a")
    assert owners()[partition_of(device_id)]["node"] == "node-a"
    b.start()
    wait_until(lambda: {o["node"] for o in owners().values() if o} == {"node-a", "node-b"}, timeout=WAIT_S,
               what="b owns partitions again")
