"""The gunicorn worker: gevent-websocket's, plus time limits on slow clients and a graceful stop.

- A request's line and headers must arrive within ``header_timeout_s`` (else 408 and close),
  and a keep-alive connection waits at most ``idle_timeout_s`` for its next request. gevent's
  pywsgi has neither, so a client trickling headers or holding silent sockets kept a slot of
  ``worker_connections`` for ever. Upgraded WebSockets are not affected (they have pings).
- One client address may hold at most ``max_connections_per_client`` connections at once;
  trusted proxies and loopback are exempt (they carry many clients; cap those in the proxy).
- gunicorn's gevent worker waits, on SIGTERM, until no connection is open. An idle keep-alive
  connection counts as open, so one idle client made every stop take the whole
  ``graceful_timeout`` and ended with a SIGKILL before the actors were stopped. Here a
  connection waiting for its next request line is closed at once; requests in flight finish.
"""

from __future__ import annotations

import collections
import http.client
import ipaddress
import json
import logging
import socket
import time
import weakref

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

log = logging.getLogger(__name__)


LOOPBACK = ("127.0.0.0/8", "::1/128")


class HeaderTimeout(ValueError):
    """The headers did not arrive in time (a ValueError: it reaches pywsgi's client-error hook)."""


def _raw_answer(status: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": message, "code": code}).encode()
    return (f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


_TIMEOUT_ANSWER = _raw_answer("408 Request Timeout", "request_timeout",
                              "The request line and headers took too long to arrive.")
# pywsgi's own refusals carry no body; every error of ours is {"error", "code"}.
_PYWSGI_ANSWERS = {
    "400": _raw_answer("400 Bad Request", "bad_request", "The request line or headers are malformed."),
    "414": _raw_answer("414 URI Too Long", "uri_too_long", "The request line is longer than 8 KiB."),
}
_HEADERS_TOO_LARGE_ANSWER = _raw_answer("431 Request Header Fields Too Large", "headers_too_large",
                                        "The request has too many headers or one that is too long.")
_TOO_MANY_ANSWER = _raw_answer("429 Too Many Requests", "too_many_connections",
                               "This address has too many connections open; close some and retry.")


class Handler(WebSocketHandler):
    idle: "weakref.WeakSet[Handler]" = weakref.WeakSet()
    stopping = False
    header_timeout_s = 10.0
    idle_timeout_s = 30.0
    max_per_client = 200
    exempt: tuple = ()  # networks of trusted proxies, and loopback
    open_per_client: "collections.Counter[str]" = collections.Counter()
    warned: dict[str, float] = {}

    _timer: "gevent.Timeout | None" = None
    _served = 0

    @classmethod
    def configure(cls, config) -> None:
        cls.header_timeout_s = config.header_timeout_s
        cls.idle_timeout_s = config.idle_timeout_s
        cls.max_per_client = config.max_connections_per_client
        # Loopback is a local proxy (every client behind it shares the address) or the operator.
        cls.exempt = tuple(ipaddress.ip_network(n) for n in (*config.trusted_proxies, *LOOPBACK))

    # --- one connection ----------------------------------------------------------------------
    def handle(self):
        address = self._peer()
        if address is not None and self.open_per_client[address] >= self.max_per_client:
            now = time.monotonic()
            if len(self.warned) > 1000:
                self.warned.clear()  # bounded, whatever the number of addresses
            if now - self.warned.get(address, -60.0) >= 60:  # one line a minute per address, not one per refusal
                self.warned[address] = now
                log.warning("refusing connections from %s: %d already open", address, self.open_per_client[address])
            self._answer(_TOO_MANY_ANSWER)
            self.close_connection = True
            self._close_socket()
            return
        if address is not None:
            self.open_per_client[address] += 1
        try:
            super().handle()
        finally:
            self._cancel_timer()
            if address is not None:
                self.open_per_client[address] -= 1
                if self.open_per_client[address] <= 0:
                    del self.open_per_client[address]

    def _peer(self) -> str | None:
        """The peer's address (an IPv6 /64) when it is subject to the cap; None for unix sockets and exempt peers."""
        address = self.client_address
        host = address[0] if isinstance(address, tuple) and address else None
        if not host:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener's IPv4 client
        if any(ip in net for net in self.exempt):
            return None
        # One IPv6 client usually holds a whole /64: count it as one address.
        return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)

    def _close_socket(self) -> None:
        try:
            self.socket.close()
        except OSError:
            pass
        self.__dict__.pop("socket", None)

    def handle_one_request(self):
        result = super().handle_one_request()
        if isinstance(result, tuple) and result[0] in _PYWSGI_ANSWERS:
            return result[0], _PYWSGI_ANSWERS[result[0]]
        return result

    # --- time limits on the request line and headers ----------------------------------------
    def read_requestline(self):
        if Handler.stopping:
            return ""  # read as end of stream: the connection closes after the last answer
        if not self._served:
            self._start_timer()  # a new connection: the whole line and headers within the limit
        Handler.idle.add(self)
        try:
            if self._served:
                # Keep-alive: wait this long for the first byte of the next request.
                arrived = False
                with gevent.Timeout(self.idle_timeout_s, False):
                    arrived = bool(self.rfile.peek(1))
                if not arrived or Handler.stopping:
                    return ""  # closed by the client, idle too long, or stopping: the connection ends
                self._start_timer()
            elif not self.rfile.peek(1):
                return ""
        except gevent.Timeout as exc:
            if exc is not self._timer:
                raise
            self._timer = None
            return ""  # a silent connection: close it
        finally:
            Handler.idle.discard(self)
        try:
            return super().read_requestline()
        except gevent.Timeout as exc:
            if exc is not self._timer:
                raise
            self._timer = None
            self._answer(_TIMEOUT_ANSWER)
            raise socket.timeout("request line too slow") from None  # pywsgi closes quietly

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        except gevent.Timeout as exc:
            if exc is not self._timer:
                raise
            self._timer = None
            raise HeaderTimeout(f"headers not received within {self.header_timeout_s:g} s") from None
        finally:
            self._cancel_timer()
            self._served += 1

    def _start_timer(self) -> None:
        self._cancel_timer()
        self._timer = gevent.Timeout(self.header_timeout_s)
        self._timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _answer(self, raw: bytes) -> None:
        try:
            with gevent.Timeout(1, False):  # a client that does not read gets nothing
                self.socket.sendall(raw)
        except OSError:
            pass

    def _handle_client_error(self, ex):
        if isinstance(ex, HeaderTimeout):
            log.info("closed a connection from %s: %s", self.client_address, ex)
            return ("408", _TIMEOUT_ANSWER)
        if isinstance(ex, http.client.HTTPException):  # a header line over 64 KiB, over 100 headers
            log.info("refused headers from %s: %s", self.client_address, ex)
            return ("431", _HEADERS_TOO_LARGE_ANSWER)
        return super()._handle_client_error(ex)

    def log_request(self):
        pass  # pumplink.request logs each request once, in the app's own format

    @classmethod
    def close_idle(cls) -> None:
        for handler in list(cls.idle):
            sock = handler.socket
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class PumpLinkWorker(GeventWebSocketWorker):
    wsgi_handler = Handler

    def load_wsgi(self):
        super().load_wsgi()
        config = getattr(self.wsgi, "config", None)
        if config is None:
            from pumplink.config import load

            config = load()
        Handler.configure(config)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        Handler.stopping = True
        gevent.spawn(self._drain)

    def _drain(self) -> None:
        app = self.wsgi
        if hasattr(app, "begin_shutdown"):
            app.begin_shutdown()  # e.g. close WebSockets with 1001 "going away"
        while True:
            Handler.close_idle()
            gevent.sleep(0.1)
