"""A flapping pump slows nobody: a client that is behind gets each device's latest state (with
the states it skipped counted), and a pump flipping faster than people can follow is flagged and
its live events debounced, while every change is still recorded."""

from __future__ import annotations

import json
import secrets
import socket

import pytest

from tests.conftest import World
from tests.e2e.test_metrics import metric
from tests.e2e.test_ws import connect, recv_json, recv_until, subscribe, ws_url
from tests.support import wait_until

PAIRS = 150  # 300 state changes: far more than a stalled client's buffers hold


def state_frames(frames, device_id):
    return [f for f in frames if f["type"] == "device.state" and f["device_id"] == device_id]


def sessions(api, device_id) -> int:
    return len(api.get(f"devices/{device_id}/sessions", params={"limit": 500}).json()["items"])


@pytest.fixture(scope="module")
def calm_world(server_factory):
    # Debouncing off: what is measured here is each client's own outbox.
    w = World(server_factory(PUMPLINK_LIVE_CHANGES_PER_S="100000"))
    yield w
    w.close()


def test_a_client_that_is_behind_gets_each_devices_latest_state_with_the_gap_marked(calm_world):
    w = calm_world
    flood, marker = w.device("Flood"), w.device("Marker")
    pump_flood, pump_marker = w.pump(flood), w.pump(marker)
    wait_until(lambda: all(w.admin.get(f"devices/{d}").json()["state"] == "off" for d in (flood, marker)),
               what="both pumps off")
    behind = connect(ws_url(w.server), token=w.admin.token, timeout=10,
                     sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    assert recv_json(behind)["type"] == "snapshot"
    subscribe(behind, [flood, marker])

    # It reads nothing while the pump flips (the flood is waited for through REST).
    for _ in range(PAIRS):
        pump_flood.manual("on")
        pump_flood.manual("off")
    wait_until(lambda: sessions(w.admin, flood) == PAIRS, timeout=30, interval=0.2, what="every flip recorded")
    pump_marker.manual("on")

    _, frames = recv_until(behind, lambda m: m.get("device_id") == marker and m.get("state") == "on", limit=2 * PAIRS)
    behind.close()
    ids = [f["id"] for f in frames if "id" in f]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "event numbers only increase"
    states = state_frames(frames, flood)
    assert states[-1]["state"] == "off", "the latest state arrives"
    assert len(states) < 2 * PAIRS, "intermediate states were coalesced"
    assert any(f["skipped"] > 0 for f in states), "the gap is marked"
    assert sum(1 + f["skipped"] for f in states) == 2 * PAIRS, "every change is sent or counted as skipped"
    assert sessions(w.admin, flood) == PAIRS, "every change is still recorded"


@pytest.fixture(scope="module")
def flap_world(server_factory, expo):
    w = World(server_factory(PUMPLINK_LIVE_CHANGES_PER_S="5", PUMPLINK_PUSH_ENABLED="true",
                             PUMPLINK_EXPO_URL=expo.url, PUMPLINK_MANUAL_RUNS_PER_HOUR="1000"))
    yield w
    w.close()


def test_a_pump_flipping_faster_than_the_limit_is_flagged_and_its_live_events_debounced(flap_world, expo):
    w = flap_world
    flapper, marker = w.device("Flapper"), w.device("Calm")
    pump, pump_marker = w.pump(flapper), w.pump(marker)
    wait_until(lambda: all(w.admin.get(f"devices/{d}").json()["state"] == "off" for d in (flapper, marker)),
               what="both pumps off")
    token = f"ExponentPushToken[{secrets.token_urlsafe(12)}]"
    assert w.admin.post("register-push-token", {"token": token}).status_code in (200, 201)
    ws = connect(ws_url(w.server), token=w.admin.token, timeout=10)
    assert recv_json(ws)["type"] == "snapshot"
    subscribe(ws, [flapper, marker])

    pairs = 40
    for _ in range(pairs):
        pump.manual("on")
        pump.manual("off")
    wait_until(lambda: metric(w.server.api().get("/metrics").text, "pumplink_devices_flapping_live") == 1,
               what="the device flagged")
    alerts = expo.wait_for(lambda f: [m for m in f.messages if (m.get("data") or {}).get("kind") == "device_flapping_live"
                                      and m["data"]["device_id"] == flapper], what="the flapping alert")
    assert [m["to"] for m in alerts] == [token], "one alert, to admins"
    wait_until(lambda: sessions(w.admin, flapper) == pairs, timeout=20, interval=0.2, what="every flip recorded")
    # Calm again: the flag clears, and what was held has gone out.
    wait_until(lambda: metric(w.server.api().get("/metrics").text, "pumplink_devices_flapping_live") == 0,
               timeout=10, what="the flag cleared")
    pump_marker.manual("on")

    _, frames = recv_until(ws, lambda m: m.get("device_id") == marker and m.get("state") == "on", limit=2 * pairs)
    ws.close()
    states = state_frames(frames, flapper)
    assert states[-1]["state"] == "off", "the live view ends on the latest state"
    assert len(states) < 2 * pairs, "debounced"
    assert any(f["skipped"] > 0 for f in states)
    assert sum(1 + f["skipped"] for f in states) == 2 * pairs, "every change is sent or counted as skipped"
    ids = [f["id"] for f in frames if "id" in f]
    assert ids == sorted(ids)
    assert metric(w.server.api().get("/metrics").text, "pumplink_live_state_events_debounced_total") > 0
