"""A local stand-in for Expo's push service: records every message and answers as Expo does.

One ``data`` entry per message (the SDK checks), ``DeviceNotRegistered`` for chosen tokens,
and whole requests refused with 503 (those carrying a chosen token) to exercise retries.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pumplink.devices.simulator import wait_on


class FakeExpo:
    def __init__(self):
        self.messages: list[dict] = []  # every accepted message, with "_at" (monotonic) added
        self.attempted: list[tuple] = []  # (event key, token) of every message, accepted or not
        self.requests: list[dict] = []  # {"path", "headers", "count", "status", "at", "events"}
        self.unregistered: set[str] = set()  # tokens answered with DeviceNotRegistered in the ticket
        self.unregistered_on_receipt: set[str] = set()  # tokens answered with it in the receipt
        self.refusals: dict[str, int] = {}  # token -> how many requests with it to refuse with 503
        self.receipts_asked: list[str] = []
        self._tickets: dict[str, str] = {}  # ticket id -> token
        self._cond = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                if self.path.endswith("/push/send"):
                    status, answer = fake._send(body, dict(self.headers), self.path)
                elif self.path.endswith("/push/getReceipts"):
                    status, answer = fake._receipts(body)
                else:
                    status, answer = 404, {"errors": [{"code": "NOT_FOUND", "message": self.path}]}
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        """What ``PUMPLINK_EXPO_URL`` is set to."""
        return f"{self.base}/--/api/v2/push/send"

    def start(self) -> "FakeExpo":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- answers -----------------------------------------------------------------------------
    def _send(self, body, headers: dict, path: str):
        messages = body if isinstance(body, list) else [body]
        events = {(msg.get("data") or {}).get("event") for msg in messages}
        with self._cond:
            refused = next((msg.get("to") for msg in messages if self.refusals.get(msg.get("to"))), None)
            if refused is not None:
                self.refusals[refused] -= 1
                self.requests.append({"path": path, "headers": headers, "count": len(messages), "status": 503,
                                      "at": time.monotonic(), "events": events})
                self._cond.notify_all()
                return 503, {"errors": [{"code": "INTERNAL_SERVER_ERROR", "message": "try again later"}]}
            data = []
            now = time.monotonic()
            for message in messages:
                to = message.get("to")
                self.attempted.append(((message.get("data") or {}).get("event"), to))
                if to in self.unregistered:
                    data.append({"status": "error", "message": f'"{to}" is not a registered push notification '
                                 "recipient", "details": {"error": "DeviceNotRegistered"}})
                    continue
                ticket = str(uuid.uuid4())
                self._tickets[ticket] = to
                self.messages.append({**message, "_at": now})
                data.append({"status": "ok", "id": ticket})
            self.requests.append({"path": path, "headers": headers, "count": len(messages), "status": 200,
                                  "at": now, "events": events})
            self._cond.notify_all()
        return 200, {"data": data}

    def _receipts(self, body):
        with self._cond:
            answer = {}
            for ticket in body.get("ids", []):
                self.receipts_asked.append(ticket)
                if self._tickets.get(ticket) in self.unregistered_on_receipt:
                    answer[ticket] = {"status": "error", "message": "not registered",
                                      "details": {"error": "DeviceNotRegistered"}}
                else:
                    answer[ticket] = {"status": "ok"}
            self._cond.notify_all()
        return 200, {"data": answer}

    # --- for tests ---------------------------------------------------------------------------
    def for_event(self, key: str) -> list[dict]:
        with self._cond:
            return [msg for msg in self.messages if (msg.get("data") or {}).get("event") == key]

    def events_of(self, kind: str) -> dict[str, list[dict]]:
        """Accepted messages of one alert kind, by event key."""
        with self._cond:
            found: dict[str, list[dict]] = {}
            for msg in self.messages:
                data = msg.get("data") or {}
                if data.get("kind") == kind:
                    found.setdefault(data["event"], []).append(msg)
            return found

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition"):
        return wait_on(self._cond, lambda: predicate(self), timeout, lambda: (
            f"fake Expo: timed out after {timeout}s waiting for {what}; "
            f"messages: {[(m.get('to'), (m.get('data') or {}).get('event')) for m in self.messages]}"))
