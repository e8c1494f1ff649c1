"""Limits on logins and registrations: per client and per email, with backoff instead of lockout.

Hand-written rather than taken from a rate-limit library (``limits``, ``slowapi``): what is
needed is not a plain fixed window but failures keyed per client *and* email, exponential
backoff, attempts that count from the moment they start (bcrypt takes ~250 ms, so parallel
guesses must not all slip past a limit), and refunds for attempts that turned out fine.
docs/decisions.md ("Login and registration limits") says why the keys are what they are.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import threading
from collections import OrderedDict

from pumplink.clock import Clock
from pumplink.config import Config
from pumplink.errors import TooManyRequests

# Failures from all clients together on one email, as a multiple of the per-email limit,
# before clients that never logged in to that account get backoff too (distributed guessing).
EMAIL_WIDE_FACTOR = 10
KNOWN_CLIENTS_PER_EMAIL = 16
KNOWN_EMAILS = 50_000
SWEEP_ABOVE = 20_000  # keys; idle ones are pruned when the tables grow past this


def client_key(address: str) -> str:
    """The unit a limit counts: an IPv4 address, or an IPv6 /64 (one subscriber's prefix)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Window:
    """Timestamps per key within a sliding window; idle keys are forgotten."""

    def __init__(self, seconds: float, clock: Clock):
        self.seconds = seconds
        self.clock = clock
        self.stamps: dict[object, collections.deque] = {}
        self._sweep_at = SWEEP_ABOVE

    def recent(self, key) -> collections.deque:
        q = self.stamps.get(key)
        if q is None:
            return collections.deque()
        cutoff = self.clock.monotonic() - self.seconds
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            del self.stamps[key]
        return q

    def add(self, key, stamp: float) -> None:
        self.stamps.setdefault(key, collections.deque()).append(stamp)
        if len(self.stamps) > self._sweep_at:
            for k in list(self.stamps):
                self.recent(k)
            self._sweep_at = max(SWEEP_ABOVE, 2 * len(self.stamps))

    def remove(self, key, stamp: float) -> None:
        q = self.stamps.get(key)
        if q is None:
            return
        try:
            q.remove(stamp)
        except ValueError:  # already out of the window
            pass
        if not q:
            del self.stamps[key]

    def clear(self, key) -> None:
        self.stamps.pop(key, None)


def backoff_wait(failures: collections.deque, limit: int, window: float, now: float) -> float:
    """Seconds until the next attempt may go ahead, if no more failures come (0: now).

    Below ``limit`` failures in the window: at once. At or above it: 1, 2, 4 … seconds (at most
    the window) after the latest failure, where the count is what the window still holds
    then, so old failures leaving the window shorten the wait and Retry-After stays true."""
    stamps = list(failures)
    n = len(stamps)
    if n < limit:
        return 0.0
    last = stamps[-1]
    for expired in range(n + 1):
        # From ``start`` until ``end`` the window holds the failures after the first ``expired``.
        start = now if expired == 0 else max(now, stamps[expired - 1] + window)
        end = stamps[expired] + window if expired < n else math.inf
        if start >= end:
            continue
        held = n - expired
        if held < limit:
            return start - now
        allowed = last + min(window, 2.0 ** min(held - limit, 30))
        if allowed < end:
            return max(start, allowed) - now
    return 0.0


def _too_many(message: str, code: str, wait: float) -> TooManyRequests:
    retry = max(1, math.ceil(wait))
    return TooManyRequests(f"{message} Try again in {retry} seconds.", code, retry_after=retry)


class LoginLimiter:
    """Login attempts: failures per (client, email), per client and per email; all attempts per client.

    - (client, email) failures: ``login_failures_per_email`` in the window, then backoff. Someone
      guessing at an account slows down only themselves: the owner, from their own address,
      still logs in.
    - client failures: ``login_failures_per_client`` over all emails, then backoff (spraying).
    - email failures from every client together: ``EMAIL_WIDE_FACTOR`` times the per-email limit,
      then backoff for clients that have not logged in to that account lately (a botnet guessing
      one password); clients it knows carry on.
    - every attempt, successful or not, per client: ``login_per_client`` (bounds bcrypt CPU).

    An attempt counts as a failure from the moment it starts, and is refunded if it succeeds or
    could not be judged (the database was away), so parallel guesses cannot outrun bcrypt.
    """

    def __init__(self, config: Config, clock: Clock):
        self.per_pair = config.login_failures_per_email
        self.per_client = config.login_failures_per_client
        self.per_email = config.login_failures_per_email * EMAIL_WIDE_FACTOR
        self.attempts_per_client = config.login_per_client
        self.window = config.login_window_s
        self.clock = clock
        self.failures = Window(self.window, clock)
        self.attempts = Window(self.window, clock)
        self.known: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()  # email -> clients
        self._lock = threading.Lock()

    def attempt(self, client: str, email: str, verify) -> bool:
        """Run ``verify()`` as one counted login attempt; 429 when a limit says wait."""
        client = client_key(client)
        stamp = self._begin(client, email)
        try:
            ok = verify()
        except BaseException:
            with self._lock:
                self._refund(client, email, stamp, attempt_too=True)
            raise
        if ok:
            self._succeeded(client, email, stamp)
        return ok

    def _keys(self, client: str, email: str):
        return (("pair", client, email), ("client", client), ("email", email))

    def _begin(self, client: str, email: str) -> float:
        with self._lock:
            now = self.clock.monotonic()
            pair, by_client, by_email = self._keys(client, email)
            checks = [
                (self.failures.recent(pair), self.per_pair,
                 "Too many failed logins for this account from your address.", "login_rate_limited"),
                (self.failures.recent(by_client), self.per_client,
                 "Too many failed logins from your address.", "login_rate_limited"),
            ]
            if not self._is_known(email, client):
                checks.append((self.failures.recent(by_email), self.per_email,
                               "Too many failed logins for this account.", "login_rate_limited"))
            for failures, limit, message, code in checks:
                wait = backoff_wait(failures, limit, self.window, now)
                if wait > 0:
                    raise _too_many(message, code, wait)
            attempts = self.attempts.recent(("client", client))
            if len(attempts) >= self.attempts_per_client:
                wait = attempts[-self.attempts_per_client] + self.window - now
                raise _too_many("Too many logins from your address.", "login_rate_limited", wait)
            self.attempts.add(("client", client), now)
            for key in (pair, by_client, by_email):
                self.failures.add(key, now)
            return now

    def _refund(self, client: str, email: str, stamp: float, attempt_too: bool = False) -> None:
        for key in self._keys(client, email):
            self.failures.remove(key, stamp)
        if attempt_too:
            self.attempts.remove(("client", client), stamp)

    def _succeeded(self, client: str, email: str, stamp: float) -> None:
        with self._lock:
            self._refund(client, email, stamp)
            # Whoever knows the password from here starts afresh on this account.
            self.failures.clear(("pair", client, email))
            clients = self.known.pop(email, None) or OrderedDict()
            clients.pop(client, None)
            clients[client] = None
            while len(clients) > KNOWN_CLIENTS_PER_EMAIL:
                clients.popitem(last=False)
            self.known[email] = clients
            while len(self.known) > KNOWN_EMAILS:
                self.known.popitem(last=False)

    def _is_known(self, email: str, client: str) -> bool:
        clients = self.known.get(email)
        return clients is not None and client in clients


class RegisterLimiter:
    """Registrations per client: ``register_per_client`` per ``register_window_s``.

    Every registration that gets as far as the email check counts, taken or not: each costs a
    bcrypt hash or answers whether an address has an account.
    """

    def __init__(self, config: Config, clock: Clock):
        self.limit = config.register_per_client
        self.window = config.register_window_s
        self.clock = clock
        self.attempts = Window(self.window, clock)
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        key = client_key(client)
        with self._lock:
            now = self.clock.monotonic()
            attempts = self.attempts.recent(key)
            if len(attempts) >= self.limit:
                wait = attempts[-self.limit] + self.window - now
                raise _too_many("Too many new accounts from your address.", "register_rate_limited", wait)
            self.attempts.add(key, now)
