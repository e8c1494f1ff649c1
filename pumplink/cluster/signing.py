"""Requests between nodes, signed with the cluster secret (pure: no I/O, no framework).

A node forwarding a call signs ``method, path, time, nonce, node, sha256(body)`` with
HMAC-SHA256 of ``PUMPLINK_CLUSTER_SECRET``. The receiver refuses a request that is unsigned,
signed with another secret, more than ``MAX_SKEW_S`` away from its own clock, or whose nonce it
has already seen within that window (a replay of a captured activation would start a pump again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Mapping

from pumplink.errors import Unauthorized

NODE = "X-PumpLink-Node"
TIME = "X-PumpLink-Time"
NONCE = "X-PumpLink-Nonce"
SIGNATURE = "X-PumpLink-Signature"
MAX_SKEW_S = 30.0
_VERSION = b"pumplink-cluster-v1"
MAX_NONCES = 200_000  # far above what a node forwards in MAX_SKEW_S; past it the oldest are dropped


def _message(method: str, path: str, stamp: str, nonce: str, node: str, body: bytes) -> bytes:
    return b"\n".join([_VERSION, method.upper().encode(), path.encode(), stamp.encode(), nonce.encode(),
                       node.encode(), hashlib.sha256(body).hexdigest().encode()])


def _digest(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, node: str, method: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one request from ``node``."""
    stamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    return {NODE: node, TIME: stamp, NONCE: nonce,
            SIGNATURE: _digest(secret, _message(method, path, stamp, nonce, node, body))}


class Nonces:
    """Nonces seen within the skew window (a request older than that is refused by its time anyway)."""

    def __init__(self, window_s: float = MAX_SKEW_S, limit: int = MAX_NONCES):
        self.window_s = window_s
        self.limit = limit
        self._seen: dict[str, float] = {}  # insertion order is arrival order
        self._lock = threading.Lock()

    def first_time(self, nonce: str, now: float) -> bool:
        with self._lock:
            horizon = now - 2 * self.window_s
            while self._seen and (len(self._seen) >= self.limit or next(iter(self._seen.values())) < horizon):
                del self._seen[next(iter(self._seen))]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


def verify(secret: str | None, headers: Mapping[str, str | None], method: str, path: str, body: bytes,
           nonces: Nonces, now: float | None = None) -> str:
    """The signing node's name, or ``Unauthorized`` saying why the request is refused."""
    if not secret:
        raise Unauthorized("This node has no cluster secret; it accepts no forwarded calls.", "cluster_not_configured")
    node, stamp, nonce, signature = (headers.get(h) for h in (NODE, TIME, NONCE, SIGNATURE))
    if not (node and stamp and nonce and signature):
        raise Unauthorized("A call between nodes must be signed with the cluster secret.", "cluster_signature_missing")
    expected = _digest(secret, _message(method, path, stamp, nonce, node, body))
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise Unauthorized("The cluster signature does not match.", "cluster_signature_invalid")
    now = time.time() if now is None else now
    try:
        at = float(stamp)
    except ValueError:
        raise Unauthorized("The cluster signature's time is not a number.", "cluster_signature_invalid") from None
    if not abs(now - at) <= MAX_SKEW_S:  # also refuses NaN
        raise Unauthorized(f"The cluster signature is more than {MAX_SKEW_S:g} s from this node's clock.",
                           "cluster_signature_stale")
    if not nonces.first_time(nonce, now):
        raise Unauthorized("This signed call was already received.", "cluster_signature_replayed")
    return node
