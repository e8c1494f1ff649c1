"""The gunicorn worker: gevent-websocket's, plus a graceful stop that does not wait on idle sockets.

gunicorn's gevent worker waits, on SIGTERM, until no connection is open. An idle keep-alive
connection counts as open, so one idle client made every stop take the whole
``graceful_timeout`` and ended with a SIGKILL before the actors were stopped. Here a
connection waiting for its next request line is closed at once; requests in flight finish.
"""

from __future__ import annotations

import socket
import weakref

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler


class Handler(WebSocketHandler):
    idle: "weakref.WeakSet[Handler]" = weakref.WeakSet()
    stopping = False

    def read_requestline(self):
        if Handler.stopping:
            return ""  # read as end of stream: the connection closes after the last answer
        Handler.idle.add(self)
        try:
            return super().read_requestline()
        finally:
            Handler.idle.discard(self)

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
