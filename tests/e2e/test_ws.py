"""The live view over a real WebSocket: the mobile app's text frames, JSON mode, slow clients."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from urllib.parse import urlencode

import jwt
import pytest
import websocket

from tests.conftest import World
from tests.support import wait_until


# --- helpers ------------------------------------------------------------------------------------
def ws_url(server, path: str = "/api/v1/ws", **query) -> str:
    url = server.base.replace("http://", "ws://") + path
    return f"{url}?{urlencode(query)}" if query else url


def connect(url: str, token: str | None = None, timeout: float = 5.0, **kw) -> websocket.WebSocket:
    header = [f"Authorization: Bearer {token}"] if token else None
    return websocket.create_connection(url, timeout=timeout, header=header, **kw)


def recv_json(ws) -> dict:
    return json.loads(ws.recv())


def recv_until(ws, predicate, limit: int = 500) -> tuple[dict, list[dict]]:
    """Read JSON frames until one matches; returns it and everything read before it."""
    seen = []
    for _ in range(limit):
        msg = recv_json(ws)
        if predicate(msg):
            return msg, seen
        seen.append(msg)
    raise AssertionError(f"no matching frame in {limit}: {seen[-5:]}")


def close_code(ws) -> tuple[int, str]:
    """Read until the server's close frame; its status code and reason."""
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0], frame.data[2:].decode()


def subscribe(ws, device_ids) -> dict:
    ws.send(json.dumps({"type": "subscribe", "device_ids": device_ids}))
    ack, _ = recv_until(ws, lambda m: m["type"] == "subscribed")
    return ack


def device_state(api, device_id: int) -> str:
    return api.get(f"devices/{device_id}").json()["state"]


def mint_token(server, user_id: int, ttl_s: float, role: str = "user") -> str:
    """A token exactly as the server issues them, with a lifetime of our choosing."""
    now = int(time.time())
    claims = {"sub": str(user_id), "role": role, "iat": now, "exp": now + ttl_s, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, server.env["PUMPLINK_JWT_SECRET"], algorithm="HS256")


def ws_clients(server) -> float:
    """The server's own count of connected WebSocket clients (Prometheus)."""
    text = server.api().get("/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("pumplink_websocket_clients ")))


@pytest.fixture(scope="module")
def own_server(server_factory):
    """A server of this module's own: device 1 (the app's device) is not shared with other tests.
    One account opens the 200 sockets of the stuck-client test: the per-account limit is raised."""
    return server_factory(PUMPLINK_MAX_WS_PER_USER="300")


@pytest.fixture
def own_world(own_server):
    w = World(own_server)
    yield w
    w.close()


# --- the mobile app -----------------------------------------------------------------------------
def test_mobile_app_flow_token_first_then_on_off_frames(own_world):
    server = own_world.server
    pump = own_world.pump(1)
    user = own_world.user()
    wait_until(lambda: device_state(user, 1) == "off", what="device 1 off")

    app = connect(ws_url(server, "/ws"))
    app.send(user.token)
    assert app.recv() == "off"  # the current state, at once
    versioned = connect(ws_url(server, "/api/v1/ws"))
    versioned.send(user.token)
    assert versioned.recv() == "off"
    assert ws_clients(server) == 2

    r = user.post("activate", {"device_id": 1, "duration": 1})
    assert r.status_code == 202, r.text
    assert app.recv() == "on"
    assert versioned.recv() == "on"
    pump.wait_for(lambda p: p.state == "on", what="pump on")

    r = own_world.admin.post("device/1/force-shutdown", {})
    assert r.status_code == 200, r.text
    assert app.recv() == "off"
    assert versioned.recv() == "off"
    pump.wait_for(lambda p: p.state == "off", what="pump off")

    # Only changes of on/off are sent: the next frame is the next ON, not a repeated "off".
    r = user.post("activate", {"device_id": 1, "duration_s": 30})
    assert r.status_code == 202, r.text
    assert app.recv() == "on"
    own_world.admin.post("device/1/force-shutdown", {})
    assert app.recv() == "off"
    app.close()
    versioned.close()
    wait_until(lambda: ws_clients(server) == 0, what="both clients forgotten")


def test_bad_token_is_closed_with_1008(own_world):
    server = own_world.server
    app = connect(ws_url(server, "/ws"))
    app.send("not-a-token")
    code, reason = close_code(app)
    assert code == 1008 and "token" in reason

    for url in (ws_url(server, token="not-a-token"), ws_url(server, format="json")):
        ws = connect(url)
        if "format" in url:
            ws.send("Bearer also-not-a-token")
        assert close_code(ws)[0] == 1008

    user = own_world.user()
    expired = mint_token(server, user.user_id, ttl_s=-5)
    ws = connect(ws_url(server), token=expired)
    code, reason = close_code(ws)
    assert code == 1008 and "expired" in reason


def test_token_expiring_while_connected_is_closed_with_1008(own_world):
    server = own_world.server
    user = own_world.user()
    ws = connect(ws_url(server), token=mint_token(server, user.user_id, ttl_s=2), timeout=6)
    assert recv_json(ws)["type"] == "snapshot"
    started = time.monotonic()
    code, reason = close_code(ws)
    assert code == 1008 and "expired" in reason
    assert time.monotonic() - started < 4.0

    # A fresh token sent in time keeps the connection open past the first one's expiry; a twin
    # connection with the same short token, not refreshed, marks when that expiry has passed.
    short = mint_token(server, user.user_id, ttl_s=2)
    refreshed, twin = connect(ws_url(server), token=short, timeout=6), connect(ws_url(server), token=short, timeout=6)
    assert recv_json(refreshed)["type"] == recv_json(twin)["type"] == "snapshot"
    refreshed.send(json.dumps({"type": "auth", "token": user.token}))
    assert recv_until(refreshed, lambda m: m["type"] == "authenticated")[0]["expires_at"].endswith("Z")
    assert close_code(twin)[0] == 1008
    refreshed.send(json.dumps({"type": "ping"}))
    assert recv_until(refreshed, lambda m: m["type"] == "pong")[0]
    refreshed.send(json.dumps({"type": "auth", "token": own_world.admin.token}))
    assert close_code(refreshed) == (1008, "That token belongs to another account.")


def test_unknown_path_oversized_message_and_plain_http(own_world):
    server = own_world.server
    ws = connect(ws_url(server, "/nope"))
    assert close_code(ws)[0] == 4404
    r = server.api().get("/api/v1/ws")
    assert r.status_code == 426 and r.json()["code"] == "upgrade_required"

    # The server does not read a huge frame into memory, before or after authentication.
    ws = connect(ws_url(server, "/ws"))
    ws.send("x" * 100_000)
    assert close_code(ws)[0] == 1009
    user = own_world.user()
    ws = connect(ws_url(server), token=user.token)
    assert recv_json(ws)["type"] == "snapshot"
    ws.send(json.dumps({"type": "subscribe", "device_ids": list(range(1, 20_000))}))
    assert close_code(ws)[0] == 1009


def test_a_client_that_never_answers_pings_is_dropped_and_shutdown_says_1001(server_factory):
    server = server_factory(PUMPLINK_WS_PING_S="0.5")
    token = World(server).admin.token
    listening, silent = connect(ws_url(server), token=token), connect(ws_url(server), token=token)
    assert recv_json(listening)["type"] == recv_json(silent)["type"] == "snapshot"
    pings = 0
    while pings < 4:  # websocket-client answers each ping it reads; `silent` reads nothing meanwhile
        opcode, _ = listening.recv_data_frame(True)
        pings += opcode == websocket.ABNF.OPCODE_PING
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:  # what it was sent before being dropped: pings, then the end
            opcode, _ = silent.recv_data_frame(True)
            assert opcode == websocket.ABNF.OPCODE_PING
    listening.send(json.dumps({"type": "ping"}))
    assert recv_until(listening, lambda m: m["type"] == "pong")[0]

    # A graceful stop tells connected clients the server is going away.
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    assert close_code(listening) == (1001, "The server is shutting down.")
    stopping.join(15)


# --- JSON mode ----------------------------------------------------------------------------------
def test_json_mode_snapshot_then_subscribed_events_in_order(world):
    a, b = world.device("WS A"), world.device("WS B")
    world.pump(a)
    pump_b = world.pump(b)
    user = world.user()
    wait_until(lambda: device_state(user, a) == device_state(user, b) == "off", what="both off")

    ws = connect(ws_url(world.server), token=user.token)
    snapshot = recv_json(ws)
    assert snapshot["type"] == "snapshot"
    devices = {d["device_id"]: d for d in snapshot["devices"]}
    assert devices[a]["state"] == "off" and devices[a]["name"] == "WS A"
    assert devices[b]["state"] == "off"
    assert subscribe(ws, [a])["device_ids"] == [a]

    # B changes first; once the server shows it, any B event has passed the broadcaster.
    pump_b.manual("on")
    wait_until(lambda: device_state(user, b) == "on", what="B on")
    r = user.post("activate", {"device_id": a, "duration_s": 1})
    assert r.status_code == 202, r.text
    activation_id = r.json()["activation"]["id"]
    last, before = recv_until(ws, lambda m: m["type"] == "activation" and m["state"] == "completed")
    events = before + [last]

    assert {e["device_id"] for e in events} == {a}, "events of an unsubscribed device arrived"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["state"] for e in events if e["type"] == "activation"] == ["queued", "starting", "running", "completed"]
    assert all(e["activation_id"] == activation_id for e in events if e["type"] == "activation")
    states = [e["state"] for e in events if e["type"] == "device.state"]
    assert states[:2] == ["starting", "on"]
    on_event = next(e for e in events if e["type"] == "device.state" and e["state"] == "on")
    assert on_event["activation_id"] == activation_id and on_event["at"].endswith("Z")
    if states[-1] != "off":
        last, _ = recv_until(ws, lambda m: m["type"] == "device.state")
        assert last["state"] == "off" and last["device_id"] == a
    ws.close()


def test_json_mode_by_query_token_and_by_first_message(world):
    user = world.user()
    ws = connect(ws_url(world.server, token=user.token))
    assert recv_json(ws)["type"] == "snapshot"
    ws.close()
    ws = connect(ws_url(world.server, "/ws", format="json"))
    ws.send(user.token)
    assert recv_json(ws)["type"] == "snapshot"
    ws.send(json.dumps({"type": "subscribe", "device_ids": "all"}))
    error, _ = recv_until(ws, lambda m: m["type"] == "error")
    assert error["code"] == "invalid_device_ids"
    ws.send("{not json")
    assert recv_until(ws, lambda m: m["type"] == "error")[0]["code"] == "malformed_json"
    ws.close()


# --- a stuck client -----------------------------------------------------------------------------
HEALTHY = 200
FLOOD_PAIRS = 300  # 600 events for the stuck client: well past its kernel buffers and its outbox


@pytest.fixture
def stuck_world(server_factory):
    """The flood must reach the stuck client as a flood: live debouncing of a flapping pump is off."""
    w = World(server_factory(PUMPLINK_MAX_WS_PER_USER="300", PUMPLINK_LIVE_CHANGES_PER_S="100000"))
    yield w
    w.close()


def test_stuck_client_is_dropped_and_never_delays_200_others(stuck_world):
    own_world = stuck_world
    server = own_world.server
    x, flood = own_world.device("Watched"), own_world.device("Flood")
    pump_x, pump_flood = own_world.pump(x), own_world.pump(flood)
    user = own_world.user()
    wait_until(lambda: device_state(user, x) == device_state(user, flood) == "off", what="both off")

    ready = threading.Barrier(HEALTHY + 1, timeout=60)
    seen_at: dict[int, float] = {}
    failures: list[BaseException] = []

    def healthy(n: int):
        try:
            ws = connect(ws_url(server), token=user.token, timeout=30)
            assert recv_json(ws)["type"] == "snapshot"
            subscribe(ws, [x])
            ready.wait()
            recv_until(ws, lambda m: m["type"] == "device.state" and m["state"] == "on")
            seen_at[n] = time.monotonic()
            ws.close()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
            ready.abort()

    threads = [threading.Thread(target=healthy, args=(n,), daemon=True) for n in range(HEALTHY)]
    for t in threads:
        t.start()

    # Never reads after the handshake; a small receive window so the server's side fills quickly.
    stuck = connect(ws_url(server), token=user.token, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    stuck.send(json.dumps({"type": "subscribe", "device_ids": [flood]}))
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        raise AssertionError(f"{len(failures)} of {HEALTHY} clients failed to connect: {failures[:3]!r}") from None
    assert not failures, failures[:3]

    # Pair by pair, each waited for: a burst would be handled in units (devices/doorbell.py) whose
    # state frames coalesce in the outbox, and a few dozen frames fit in the kernel's buffers.
    def newest_session():
        items = user.get(f"devices/{flood}/sessions", params={"limit": 1}).json()["items"]
        return (items[0]["id"], items[0]["ended_at"] is not None) if items else (None, False)

    last = None
    for _ in range(FLOOD_PAIRS):
        pump_flood.manual("on")
        pump_flood.manual("off")
        last = wait_until(lambda: (s := newest_session())[0] != last and s[1] and s[0], interval=0.002,
                          what="the pair processed")
    wait_until(lambda: len(user.get(f"devices/{flood}/sessions", params={"limit": 500}).json()["items"])
               == FLOOD_PAIRS, timeout=30, interval=0.2, what="the flood processed")

    started = time.monotonic()
    pump_x.manual("on")
    for t in threads:
        t.join(timeout=10)
    assert not failures, failures[:3]
    assert len(seen_at) == HEALTHY
    slowest = max(seen_at.values()) - started
    assert slowest < 1.0, f"the slowest of {HEALTHY} clients saw the change after {slowest:.2f}s"

    # The stuck client was cut off: it gets what was buffered, then the end, not 600 events.
    # (Its outbox keeps only the flood pump's latest state, so it is found by the data it leaves
    # untaken, not by a full outbox: waited for before it reads, which would un-stick it.)
    wait_until(lambda: ws_clients(server) == 0, timeout=20, interval=0.2, what="the stuck client cut off")
    stuck.settimeout(10)
    frames = 0
    with pytest.raises((websocket.WebSocketConnectionClosedException, websocket.WebSocketProtocolException,
                        ConnectionError, OSError, ValueError)):
        while True:
            opcode, _ = stuck.recv_data_frame(True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise websocket.WebSocketConnectionClosedException("closed")
            frames += 1
    assert 0 < frames < 2 * FLOOD_PAIRS, frames
