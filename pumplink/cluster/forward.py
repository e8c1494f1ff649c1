"""Forwarding a gateway call to the node that owns the device, over HTTP, signed.

What travels is the gateway call, not the client's HTTP request: ``{op, user_id, args}`` to
``POST <owner>/internal/v1/call``. The owner authorizes the user again and runs the same
gateway method on its own actor; its answer comes back as ``{"result": ...}``, or as the error
it raised (status, code, message, extra fields, Retry-After), which is raised here again so the
client's answer is the owner's.

A call that could not be sent (refused connection, no route) surely did nothing: a retryable 503.
A call sent whose answer never came may have been done (as when a local actor times out): 503
``owner_timeout``, like the single node's ``device_timeout``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests
import requests.adapters

from pumplink.cluster import signing
from pumplink.errors import PumpLinkError, Unavailable

log = logging.getLogger(__name__)

PATH = "/internal/v1/call"
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 15.0  # above the owner's own wait on its actor (gateway.ASK_TIMEOUT_S)
RETRY_AFTER_S = 1
POOLS = 16  # owners whose connections are kept
POOL_SIZE = 64  # connections kept per owner: calls in flight at once beyond it open and close their own


def rebuild(status: int, body: Any, retry_after: str | None) -> PumpLinkError:
    """The owner's error as one this node's API writes identically."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not isinstance(body.get("code"), str):
        return Unavailable("The server that owns the device gave an answer this one cannot read.",
                           "owner_failed", retry_after=RETRY_AFTER_S)
    extra = {k: v for k, v in body.items() if k not in ("error", "code")}
    try:
        after = float(retry_after) if retry_after is not None else None
    except ValueError:
        after = None
    error = PumpLinkError(body["error"], body["code"], retry_after=after, **extra)
    error.status = status
    return error


class Forwarder:
    """Sends calls to other nodes; counts them by operation and outcome."""

    def __init__(self, node: str, secret: str, metrics=None):
        self.node = node
        self.secret = secret
        self.metrics = metrics
        # One pool of keep-alive connections per owner, shared by every request (a session per
        # greenlet would open a connection per request and leave it to the garbage collector).
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=POOLS, pool_maxsize=POOL_SIZE)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def close(self) -> None:
        self._session.close()

    def _count(self, op: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.forwarded.labels(op, outcome).inc()

    def call(self, address: str, op: str, user_id: int | None, **args) -> Any:
        body = json.dumps({"op": op, "user_id": user_id, "args": args}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **signing.sign(self.secret, self.node, "POST", PATH, body)}
        url = address.rstrip("/") + PATH
        try:
            answer = self._session.post(url, data=body, headers=headers, timeout=(CONNECT_TIMEOUT_S, ANSWER_TIMEOUT_S))
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.ConnectTimeout) or "Read timed out" not in str(exc):
                self._count(op, "unreachable")
                log.warning("cluster: %s at %s unreachable: %s", op, address, exc)
                raise Unavailable("The server that owns the device is not reachable; try again in a moment.",
                                  "owner_unreachable", retry_after=RETRY_AFTER_S) from None
            raise self._timeout(op, address) from None
        except requests.Timeout:
            raise self._timeout(op, address) from None
        try:
            data = answer.json()
        except ValueError:
            data = None
        if answer.status_code == 200 and isinstance(data, dict) and "result" in data:
            self._count(op, "ok")
            return data["result"]
        if isinstance(data, dict) and str(data.get("code", "")).startswith("cluster_"):
            # The owner refused our signature: the nodes disagree on the secret or the clock.
            # Never the client's fault, and a 401 would log the app out.
            self._count(op, "refused")
            log.error("cluster: %s refused our call %s: %s", address, op, data)
            raise Unavailable("The servers of this service cannot reach each other right now; try again later.",
                              "cluster_misconfigured", retry_after=RETRY_AFTER_S)
        self._count(op, "error")
        raise rebuild(answer.status_code, data, answer.headers.get("Retry-After"))

    def _timeout(self, op: str, address: str) -> Unavailable:
        self._count(op, "timeout")
        log.warning("cluster: %s at %s did not answer in %s s", op, address, ANSWER_TIMEOUT_S)
        return Unavailable("The server that owns the device did not answer in time; try again shortly.",
                           "owner_timeout", retry_after=RETRY_AFTER_S)
