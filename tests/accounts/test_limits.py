"""Login and registration limits, and the client address they count, as pure logic."""

from __future__ import annotations

import collections
import datetime as dt

import falcon.testing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumplink.api.support import client_address
from pumplink.clock import FakeClock
from pumplink.config import Config
from pumplink.errors import TooManyRequests
from pumplink.accounts.limits import LoginLimiter, RegisterLimiter, backoff_wait, client_key

CONFIG = Config(login_failures_per_email=3, login_failures_per_client=10, login_window_s=300,
                login_per_client=1000, register_per_client=2, register_window_s=600)


@pytest.fixture
def clock():
    return FakeClock(dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))


def guess(limiter, client, email, ok=False):
    return limiter.attempt(client, email, lambda: ok)


def retry_after(limiter, client, email) -> int:
    with pytest.raises(TooManyRequests) as err:
        guess(limiter, client, email)
    return err.value.retry_after


def test_failures_back_off_doubling_for_that_client_and_account_only(clock):
    limiter = LoginLimiter(CONFIG, clock)
    for _ in range(3):
        assert guess(limiter, "203.0.113.1", "ana@example.org") is False
    waits = []
    for _ in range(9):
        waits.append(retry_after(limiter, "203.0.113.1", "ana@example.org"))
        clock.advance(waits[-1] - 0.5)
        assert retry_after(limiter, "203.0.113.1", "ana@example.org") == 1  # Retry-After is not early
        clock.advance(0.5)
        assert guess(limiter, "203.0.113.1", "ana@example.org") is False
    # Doubling, until the first three failures leave the 300 s window: 12 guesses in 300 s.
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 45], waits
    # The owner, elsewhere, is untouched; and so is another account from the attacker's address.
    assert guess(limiter, "198.51.100.7", "ana@example.org", ok=True) is True
    assert guess(limiter, "203.0.113.1", "bo@example.org") is False


def test_a_success_clears_that_clients_failures(clock):
    limiter = LoginLimiter(CONFIG, clock)
    for _ in range(2):
        guess(limiter, "198.51.100.7", "ana@example.org")
    assert guess(limiter, "198.51.100.7", "ana@example.org", ok=True)
    for _ in range(3):
        assert guess(limiter, "198.51.100.7", "ana@example.org") is False  # three fresh tries


def test_an_attempt_that_could_not_be_judged_does_not_count(clock):
    limiter = LoginLimiter(CONFIG, clock)

    def database_away():
        raise ConnectionError("database away")

    for _ in range(10):
        with pytest.raises(ConnectionError):
            limiter.attempt("198.51.100.7", "ana@example.org", database_away)
    assert guess(limiter, "198.51.100.7", "ana@example.org", ok=True)


def test_one_client_spraying_many_accounts_is_slowed(clock):
    limiter = LoginLimiter(CONFIG, clock)
    for n in range(10):
        guess(limiter, "203.0.113.1", f"u{n}@example.org")
    assert retry_after(limiter, "203.0.113.1", "u99@example.org") == 1
    assert guess(limiter, "198.51.100.7", "u99@example.org") is False  # others are not


def test_many_clients_on_one_account_slow_strangers_not_known_clients(clock):
    limiter = LoginLimiter(CONFIG, clock)
    assert guess(limiter, "198.51.100.7", "ana@example.org", ok=True)  # the owner's phone
    for n in range(15):  # 30 failures = 10 x the per-email limit, 2 from each address
        guess(limiter, f"192.0.2.{n}", "ana@example.org")
        guess(limiter, f"192.0.2.{n}", "ana@example.org")
    assert retry_after(limiter, "192.0.2.200", "ana@example.org") >= 1
    assert guess(limiter, "198.51.100.7", "ana@example.org", ok=True)


def test_every_login_counts_against_the_clients_allowance(clock):
    limiter = LoginLimiter(CONFIG.replace(login_per_client=3), clock)
    for _ in range(3):
        assert guess(limiter, "198.51.100.7", "ana@example.org", ok=True)
    assert retry_after(limiter, "198.51.100.7", "ana@example.org") == 300
    clock.advance(300)
    assert guess(limiter, "198.51.100.7", "ana@example.org", ok=True)


def test_registrations_per_client_in_a_sliding_window(clock):
    limiter = RegisterLimiter(CONFIG, clock)
    limiter.take("203.0.113.1")
    clock.advance(100)
    limiter.take("203.0.113.1")
    with pytest.raises(TooManyRequests) as err:
        limiter.take("203.0.113.1")
    assert err.value.retry_after == 500 and err.value.code == "register_rate_limited"
    limiter.take("198.51.100.7")
    clock.advance(500)
    limiter.take("203.0.113.1")


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("unknown") == "unknown"


def address(peer: str, forwarded: str | None, trusted=("127.0.0.1/32", "10.0.0.0/8")) -> str:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    req = falcon.testing.create_req(headers=headers, remote_addr=peer)
    return client_address(req, trusted)


@pytest.mark.parametrize("peer, forwarded, expected", [
    ("127.0.0.1", "203.0.113.5", "203.0.113.5"),
    ("127.0.0.1", "9.9.9.9, 203.0.113.5", "203.0.113.5"),  # the client wrote the left one
    ("127.0.0.1", "203.0.113.5, 10.0.0.2", "203.0.113.5"),  # two trusted proxies in a row
    ("127.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # all trusted: the farthest one
    ("127.0.0.1", "203.0.113.5:4711", "203.0.113.5"),
    ("127.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
    ("127.0.0.1", "203.0.113.5, garbage", "127.0.0.1"),  # a hop no proxy would write
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", None, "127.0.0.1"),
    ("198.51.100.1", "203.0.113.5", "198.51.100.1"),  # not a trusted proxy: the header is ignored
])
def test_forwarded_for_is_read_from_the_right_and_only_from_trusted_proxies(peer, forwarded, expected):
    assert address(peer, forwarded) == expected


def test_without_trusted_proxies_the_peer_is_the_client():
    assert address("127.0.0.1", "203.0.113.5", trusted=()) == "127.0.0.1"
    assert address("127.0.0.1", ", ".join(["10.0.0.1"] * 10_000)) == "10.0.0.1"


@given(gaps=st.lists(st.floats(min_value=0, max_value=400), min_size=0, max_size=25),
       limit=st.integers(min_value=1, max_value=6), window=st.integers(min_value=1, max_value=600),
       later=st.floats(min_value=0, max_value=600))
def test_retry_after_is_never_early_nor_late(gaps, limit, window, later):
    stamps, t = [], 0.0
    for gap in gaps:
        t += gap
        stamps.append(t)
    now = t + later
    held = collections.deque(s for s in stamps if s > now - window)
    wait = backoff_wait(held, limit, window, now)
    assert 0 <= wait <= window

    def allowed_at(when):
        return backoff_wait(collections.deque(s for s in held if s > when - window), limit, window, when) == 0

    assert allowed_at(now + wait)
    if wait > 1e-6:
        assert not allowed_at(now + wait - 1e-6)
