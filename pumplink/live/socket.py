"""The WebSocket transport (``/api/v1/ws`` and ``/ws``): one greenlet per connection, reading only.

gevent-websocket upgrades the request before any WSGI code runs and puts the socket in
``environ["wsgi.websocket"]``; ``PumpLinkService`` hands such requests to ``LiveSocket``.
Its greenlet authenticates, registers the client with the broadcaster, then only reads;
the client's writer greenlet (``live/connection.py``, ``Connection``) does all the writing.
A text-mode (app) socket is authenticated once; a JSON one re-authenticates before its token
expires. Both follow the account: the broadcaster closes them on deletion or demotion.
The push-token resources and the plain-GET answer for ``/ws`` are in api/live.py.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from urllib.parse import parse_qs

import gevent
import gevent.lock
import pykka
from geventwebsocket.exceptions import WebSocketError

from pumplink.accounts.credentials import bearer_token
from pumplink.accounts.service import Accounts
from pumplink.clock import iso
from pumplink.config import Config
from pumplink.errors import DatabaseUnavailable, PumpLinkError, Unauthorized, Unavailable
from pumplink.sites import access
from pumplink.live.broadcaster import Connection, Register, Seen, Subscribe, Unregister
from pumplink.live.frames import dumps, legacy_frame
from pumplink.storage.db import OPERATIONAL_ERRORS

log = logging.getLogger(__name__)

PATHS = ("/api/v1/ws", "/ws")
# The app sends its token right after connecting; a silent socket is not kept waiting for long.
AUTH_TIMEOUT_S = 10.0
# Token checks at once: a reconnect storm (every phone after a restart) must not take the whole
# database pool from the actors and the HTTP API. Each check is one short query.
AUTH_CONCURRENCY = 4
MAX_SUBSCRIBED = 1000


class LiveSocket:
    """The WSGI callable for upgraded requests: one greenlet per connection, reading only."""

    def __init__(self, config: Config, system, accounts: Accounts):
        self.config = config
        self.system = system
        self.accounts = accounts
        self.db = system.rt.db
        self.clock = system.rt.clock
        self.connections: set[Connection] = set()
        self.closing = False
        self._auth_gate = gevent.lock.BoundedSemaphore(AUTH_CONCURRENCY)

    def __call__(self, environ, start_response):
        conn = Connection(environ["wsgi.websocket"], ping_s=self.config.ws_ping_s, clock=self.clock)
        self.connections.add(conn)
        try:
            self._serve(conn, environ)
        except Exception:
            log.exception("websocket %s failed", conn.id)
            self._refuse(conn, 1011, "Something went wrong on the server; it has been logged.")
        finally:
            self.connections.discard(conn)
            self._tell(Unregister(conn))
            conn.finish()
        return []

    def close_all(self, code: int = 1001, reason: str = "The server is shutting down.") -> None:
        """Graceful shutdown: every client is told why, so the worker need not wait for them."""
        self.closing = True
        for conn in list(self.connections):
            conn.close(code, reason)

    # --- one connection ---------------------------------------------------------------------
    def _serve(self, conn: Connection, environ) -> None:
        path = (environ.get("PATH_INFO") or "/").rstrip("/") or "/"
        if path not in PATHS:
            return self._refuse(conn, 4404, f"There is no WebSocket endpoint at {path}; use /api/v1/ws.")
        if self.closing:
            return self._refuse(conn, 1001, "The server is shutting down.")
        query = parse_qs(environ.get("QUERY_STRING") or "")
        token = bearer_token(environ.get("HTTP_AUTHORIZATION")) or _last(query, "token")
        json_mode = token is not None or (_last(query, "format") or "").lower() == "json"
        if token is None:
            token = self._first_message_token(conn)
            if token is None:
                if conn.broken:
                    return self._refuse(conn, *conn.goodbye)
                return self._refuse(conn, 1008, "Send the access token as the first message.")
        read_at = self.clock.now()  # before the read: a change committed after it reaches us as an event
        try:
            user, claims = self._authenticate(token)
        except Unauthorized as exc:
            return self._refuse(conn, 1008, exc.message)
        except Unavailable as exc:
            return self._refuse(conn, 1011, exc.message)
        conn.user_id, conn.legacy = user.id, not json_mode
        conn.role, conn.role_at = user.role, read_at
        if not conn.legacy:
            # The app's text mode cannot re-authenticate: it stays open while the account keeps
            # its access (issue 11), which the broadcaster follows by role instead.
            conn.expire_in(claims["exp"] - self.clock.now().timestamp())
        try:
            # Registered before the snapshot is taken: a change may show in both, none is missed.
            last_id = self.system.broadcaster.ask(Register(conn), timeout=5)
            first = self._first_frames(conn, user, last_id)
        except (pykka.Timeout, pykka.ActorDeadError):
            return self._refuse(conn, 1011, "The live feed is not available right now; reconnect shortly.")
        except PumpLinkError as exc:
            return self._refuse(conn, 1011, exc.message)
        conn.start(first)
        log.info("websocket %s open for user %s (%s)", conn.id, user.id, "legacy" if conn.legacy else "json")
        self._read(conn)

    def _first_message_token(self, conn: Connection) -> str | None:
        message = None
        with gevent.Timeout(AUTH_TIMEOUT_S, False):
            try:
                message = conn.ws.receive()
            except WebSocketError:
                return None
        if not isinstance(message, str):
            return None
        text = message.strip()
        if text.startswith("{"):
            try:
                body = json.loads(text)
            except ValueError:
                return None
            text = body.get("token") if isinstance(body, dict) and isinstance(body.get("token"), str) else ""
        return bearer_token(text) or text.strip() or None

    def _authenticate(self, token: str):
        try:
            with self._auth_gate, self.db.connection_context():
                return self.accounts.user_for_token(token)
        except OPERATIONAL_ERRORS as exc:
            log.warning("websocket authentication: database unavailable: %s", exc)
            raise DatabaseUnavailable("The database is not reachable right now; reconnect shortly.") from None

    def _first_frames(self, conn: Connection, user, last_id: int) -> list[str]:
        gateway = self.system.gateway
        try:
            with self.db.connection_context():
                visible = access.visible_devices(user)
        except OPERATIONAL_ERRORS:
            raise DatabaseUnavailable("The database is not reachable right now; reconnect shortly.") from None
        if conn.legacy:
            if visible is not None and self.config.legacy_device_id not in visible:
                return []  # the app's device is not in this account's sites: it is told nothing
            return [legacy_frame(gateway.summary(self.config.legacy_device_id)["state"])]
        return [dumps({"type": "snapshot", "devices": gateway.snapshot(visible), "last_event_id": last_id,
                       "at": iso(self.clock.now())})]

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.ws.receive()
            except WebSocketError:
                return
            if message is None:
                return
            conn.heard()
            if not conn.legacy and not conn.dead:
                self._on_message(conn, message)

    def _on_message(self, conn: Connection, message) -> None:
        if not isinstance(message, str):
            return self._error(conn, "binary_not_understood", "Send JSON text messages.")
        try:
            body = json.loads(message)
        except ValueError:
            return self._error(conn, "malformed_json", "The message is not valid JSON.")
        kind = body.get("type") if isinstance(body, dict) else None
        if kind == "subscribe":
            ids = body.get("device_ids")
            if ids is not None and not (isinstance(ids, list) and len(ids) <= MAX_SUBSCRIBED and all(
                    isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)):
                return self._error(conn, "invalid_device_ids",
                                   "device_ids must be a list of device ids, or null for every device.")
            self._tell(Subscribe(conn, frozenset(ids) if ids is not None else None))
        elif kind == "auth":
            self._reauthenticate(conn, body.get("token"))
        elif kind == "ping":
            conn.offer(dumps({"type": "pong"}))
        else:
            self._error(conn, "unknown_message",
                        "Messages are {\"type\": \"subscribe\", \"device_ids\": [...]}, "
                        "{\"type\": \"auth\", \"token\": \"...\"} or {\"type\": \"ping\"}.")

    def _reauthenticate(self, conn: Connection, token) -> None:
        """A fresh token before the old one expires keeps the connection open."""
        read_at = self.clock.now()
        try:
            if not isinstance(token, str):
                raise Unauthorized("token must be an access token.", "invalid_token")
            user, claims = self._authenticate(token)
        except Unauthorized as exc:
            return conn.close(1008, exc.message)
        except Unavailable as exc:
            return self._error(conn, "unavailable", exc.message)
        if user.id != conn.user_id:
            return conn.close(1008, "That token belongs to another account.")
        conn.expire_in(claims["exp"] - self.clock.now().timestamp())
        self._tell(Seen(conn, user.role, read_at))  # the role read now filters what follows
        conn.offer(dumps({"type": "authenticated", "expires_at": iso(_from_ts(claims["exp"]))}))

    # --- helpers ----------------------------------------------------------------------------
    def _refuse(self, conn: Connection, code: int, reason: str) -> None:
        log.info("websocket %s refused (%s): %s", conn.id, code, reason)
        conn.close(code, reason)
        # Wait for the peer's answer to our close frame (bounded by the connection's own timer).
        while not conn.dead and not conn.broken:
            try:
                if conn.ws.receive() is None:
                    return
            except WebSocketError:
                return

    @staticmethod
    def _error(conn: Connection, code: str, message: str) -> None:
        conn.offer(dumps({"type": "error", "code": code, "error": message}))

    def _tell(self, message) -> None:
        ref = getattr(self.system, "broadcaster", None)
        if ref is None:
            return
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            log.debug("broadcaster is gone; %s dropped", type(message).__name__)


def _last(query: dict, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _from_ts(seconds) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
