"""Signed calls between nodes (pure): who may call another node's internal endpoint."""

from __future__ import annotations

import pytest

from pumplink.cluster import signing
from pumplink.cluster.forward import rebuild
from pumplink.errors import Unauthorized

SECRET = "s" * 48
BODY = b'{"op":"activate","user_id":3,"args":{"device_id":7,"duration_s":2}}'
PATH = "/internal/v1/call"


def verify(headers, body=BODY, now=1000.0, nonces=None, secret=SECRET, path=PATH):
    return signing.verify(secret, headers, "POST", path, body, nonces or signing.Nonces(), now=now)


def test_a_signed_call_names_its_node():
    assert verify(signing.sign(SECRET, "node-a", "POST", PATH, BODY, now=1000.0)) == "node-a"


@pytest.mark.parametrize("change, code", [
    (lambda h: {}, "cluster_signature_missing"),
    (lambda h: {**h, signing.SIGNATURE: None}, "cluster_signature_missing"),
    (lambda h: {**h, signing.SIGNATURE: "0" * 64}, "cluster_signature_invalid"),
    (lambda h: {**h, signing.NODE: "node-b"}, "cluster_signature_invalid"),  # the node is signed
    (lambda h: {**h, signing.TIME: "1001.000"}, "cluster_signature_invalid"),  # so is the time
])
def test_unsigned_or_altered_headers_are_refused(change, code):
    headers = change(signing.sign(SECRET, "node-a", "POST", PATH, BODY, now=1000.0))
    with pytest.raises(Unauthorized) as refused:
        verify(headers)
    assert refused.value.code == code and refused.value.status == 401


def test_another_secret_another_body_or_path_is_refused():
    headers = signing.sign(SECRET, "node-a", "POST", PATH, BODY, now=1000.0)
    for kw in ({"secret": "t" * 48}, {"body": BODY.replace(b"2}", b"9}")}, {"path": "/internal/v1/other"}):
        with pytest.raises(Unauthorized) as refused:
            verify(headers, **kw)
        assert refused.value.code == "cluster_signature_invalid"


@pytest.mark.parametrize("skew", [-31.0, 31.0, 3600.0])
def test_a_call_signed_too_long_ago_or_ahead_is_refused(skew):
    headers = signing.sign(SECRET, "node-a", "POST", PATH, BODY, now=1000.0 + skew)
    with pytest.raises(Unauthorized) as refused:
        verify(headers)
    assert refused.value.code == "cluster_signature_stale"


def test_a_node_without_a_secret_accepts_nothing():
    headers = signing.sign(SECRET, "node-a", "POST", PATH, BODY, now=1000.0)
    with pytest.raises(Unauthorized) as refused:
        verify(headers, secret=None)
    assert refused.value.code == "cluster_not_configured"


def test_a_replayed_call_is_refused_within_the_window():
    nonces = signing.Nonces()
    headers = signing.sign(SECRET, "node-a", "POST", PATH, BODY, now=1000.0)
    verify(headers, nonces=nonces)
    with pytest.raises(Unauthorized) as refused:
        verify(headers, now=1010.0, nonces=nonces)
    assert refused.value.code == "cluster_signature_replayed"
    # A fresh signature of the same call is another call.
    verify(signing.sign(SECRET, "node-a", "POST", PATH, BODY, now=1010.0), now=1010.0, nonces=nonces)


def test_nonces_are_bounded_and_forget_what_their_time_check_refuses_anyway():
    nonces = signing.Nonces(window_s=30.0, limit=3)
    for i in range(5):
        assert nonces.first_time(f"n{i}", 1000.0)
    assert len(nonces._seen) == 3
    assert nonces.first_time("n4", 1000.0) is False
    assert nonces.first_time("late", 1100.0) and list(nonces._seen) == ["late"]


def test_the_owners_error_is_raised_again_as_the_same_answer():
    error = rebuild(409, {"error": "Queue full.", "code": "queue_full", "limit": 2}, "3")
    assert (error.status, error.code, error.message, error.extra, error.retry_after) == (
        409, "queue_full", "Queue full.", {"limit": 2}, 3.0)
    odd = rebuild(502, "<html>bad gateway</html>", None)
    assert (odd.status, odd.code) == (503, "owner_failed")
