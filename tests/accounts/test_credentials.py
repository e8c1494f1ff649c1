"""The stateless credential rules: one Bearer parser for HTTP and WebSocket, token shapes, views."""

import datetime as dt

import pytest

from pumplink.accounts.credentials import MAX_TOKEN, bearer_token, decode_access, encode_access, well_formed
from pumplink.errors import DatabaseUnavailable, Unauthorized
from pumplink.storage import models as m
from pumplink.views import user_view

SECRET = "k9-Qw7_zT3xLpV2mN8bR4cY6hJ1sD5fG0aE"


@pytest.mark.parametrize("header, token", [
    ("Bearer abc.def.ghi", "abc.def.ghi"),
    ("bearer   abc  ", "abc"),
    ("  BEARER abc", "abc"),
    ("Bearer", None),
    ("Bearer    ", None),
    ("Basic abc", None),
    ("abc.def.ghi", None),
    ("", None),
    (None, None),
])
def test_bearer_token_reads_the_scheme_case_insensitively(header, token):
    assert bearer_token(header) == token


def test_tokens_no_server_issues_are_refused_before_parsing():
    assert well_formed("a.b.c")
    assert not well_formed("a" * (MAX_TOKEN + 1))
    assert not well_formed("a b")
    assert not well_formed("a\x00\tb")


def test_an_access_token_round_trips_and_a_wrong_secret_is_unauthorized():
    now = int(dt.datetime.now(dt.timezone.utc).timestamp())
    token = encode_access({"sub": "7", "iat": now, "exp": now + 60, "jti": "x"}, SECRET)
    assert decode_access(token, SECRET)["sub"] == "7"
    with pytest.raises(Unauthorized) as err:
        decode_access(token, SECRET[::-1])
    assert err.value.code == "invalid_token"
    expired = encode_access({"sub": "7", "iat": now - 120, "exp": now - 60, "jti": "x"}, SECRET)
    with pytest.raises(Unauthorized) as err:
        decode_access(expired, SECRET)
    assert err.value.code == "token_expired"


def test_database_unavailable_is_one_503_with_a_retry_hint():
    err = DatabaseUnavailable()
    assert (err.status, err.code, err.retry_after) == (503, "database_unavailable", 5)
    assert "database" in err.message


def test_a_users_created_at_has_milliseconds_like_every_other_time():
    user = m.User(id=3, email="a@example.org", role="user", daily_quota_minutes=None,
                  created_at=dt.datetime(2026, 12, 3, 9, 0, 0, 123456))
    view = user_view(user)
    assert view["created_at"] == "2026-12-03T09:00:00.123Z"
    assert view["approved"] is True
