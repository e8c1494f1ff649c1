"""The one parser of inbound MQTT messages: whatever arrives, a bounded result and never an exception."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumplink.devices.messages import Ack, Availability, StateReport
from pumplink.devices.protocol import DROP_REASONS, MAX_PAYLOAD_BYTES, Drop, Inbound, parse_inbound
from pumplink.runtime import Topics

PREFIX, LEGACY = "pumplink", "device"
FAST = settings(deadline=timedelta(milliseconds=500), max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])


def parse(topic, payload, retained=False):
    return parse_inbound(PREFIX, LEGACY, topic, payload, retained)


def timed(topic, payload, retained=False):
    t0 = time.perf_counter()
    result = parse(topic, payload, retained)
    return result, time.perf_counter() - t0


def assert_bounded(result, elapsed):
    assert isinstance(result, (Inbound, Drop)), result
    if isinstance(result, Drop):
        assert result.reason in DROP_REASONS and isinstance(result.detail, str) and len(result.detail) < 300
    else:
        assert isinstance(result.message, {"ack": Ack, "state": StateReport, "availability": Availability,
                                           "status": StateReport}[result.kind])
        assert 1 <= result.device_id <= 999_999_999
    assert elapsed < 0.1, f"parsing took {elapsed * 1000:.1f} ms"


# --- what controllers send ------------------------------------------------------------------
def test_well_formed_messages_parse():
    r = parse("pumplink/devices/7/ack", b'{"id": "a1", "ok": true, "state": "on"}')
    assert r == Inbound("pumplink", 7, "ack", Ack("a1", True, "on"))
    r = parse("pumplink/devices/7/state", b'{"state": "off", "reason": "timer"}', True)
    assert r == Inbound("pumplink", 7, "state", StateReport("off", "timer", None, True))
    r = parse("pumplink/devices/7/state", b'{"state": "on", "remaining_s": 540.5, "reason": "command"}')
    assert r.message.remaining_s == 540.5
    assert parse("pumplink/devices/7/availability", b"offline", True).message == Availability(False, True)
    assert parse("device/12/ack", b"\xff anything").message == Ack(None, True, None)
    assert parse("device/12/status", b" ON\n").message == StateReport("on", "status", None, False)
    # Brackets inside strings are text, not nesting.
    r = parse("pumplink/devices/7/ack", json.dumps({"id": "x", "ok": False, "error": "[[[[{{{{" * 50}).encode())
    assert r.message.error.startswith("[[[[{{{{") and len(r.message.error) <= 200


# --- what an attacker or a buggy controller sends --------------------------------------------
HOSTILE = [
    # The two payloads of issue 10, finding 1.
    ("pumplink/devices/²/state", b'{"state": "on"}', "device_id"),
    ("pumplink/devices/5/state", b"[" * 100_000 + b"]" * 100_000, "too_large"),
    # Deep, but small enough to pass the size check: still never reaches json.loads' recursion.
    ("pumplink/devices/5/state", b"[" * 2000 + b"]" * 2000, "too_deep"),
    ("pumplink/devices/5/state", b'{"state": "on", "x": ' + b'{"a":' * 500 + b"1" + b"}" * 501, "too_deep"),
    ("pumplink/devices/5/state", b"[" * 4000, "too_deep"),
    ("pumplink/devices/5/state", b'{"state": "on", "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', "too_large"),
    ("pumplink/devices/٣/ack", b"{}", "device_id"),  # Arabic-Indic three
    ("pumplink/devices/５/ack", b"{}", "device_id"),  # full-width five
    ("pumplink/devices/05/ack", b"{}", "device_id"),  # would alias device 5
    ("pumplink/devices/0/ack", b"{}", "device_id"),
    ("pumplink/devices/1234567890/ack", b"{}", "device_id"),  # over a PostgreSQL integer's range
    ("pumplink/devices/-5/ack", b"{}", "device_id"),
    ("pumplink/devices/ 5/ack", b"{}", "device_id"),
    ("pumplink/devices//ack", b"{}", "device_id"),
    ("pumplink/devices/+/ack", b"{}", "device_id"),
    ("pumplink/devices/#", b"{}", "topic"),
    ("pumplink/devices/5/ack/extra", b"{}", "topic"),
    ("pumplink/devices/5", b"{}", "topic"),
    ("pumplink/devices/5/command", b"{}", "kind"),  # our own commands are not device input
    ("pumplink/devices/5/status", b"on", "kind"),  # a legacy kind on a pumplink topic
    ("device/5/state", b"on", "kind"),
    ("elsewhere/5/ack", b"{}", "topic"),
    (b"pumplink/devices/5/\xff", b"{}", "topic"),
    ("pumplink/devices/5/state", b'{"state": "\xff"}', "utf8"),
    ("pumplink/devices/5/ack", b"not json", "json"),
    ("pumplink/devices/5/ack", b"", "empty"),
    ("pumplink/devices/5/state", b"", "empty"),
    ("pumplink/devices/5/availability", b"", "empty"),
    ("device/5/status", b"", "empty"),
    ("pumplink/devices/5/ack", b"null", "invalid"),
    ("pumplink/devices/5/ack", b"[1, 2]", "invalid"),
    ("pumplink/devices/5/ack", b'{"id": 5, "ok": true}', "invalid"),
    ("pumplink/devices/5/ack", b'{"id": "a", "ok": "yes"}', "invalid"),
    ("pumplink/devices/5/ack", b'{"id": "' + b"a" * 65 + b'", "ok": true}', "invalid"),
    ("pumplink/devices/5/ack", b'{"id": "a\\u0000", "ok": true}', "invalid"),
    ("pumplink/devices/5/ack", b'{"id": "a", "ok": true, "state": "sideways"}', "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": NaN}', "json"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": Infinity}', "json"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": 1e999}', "json"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": 1e300}', "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": -1}', "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": "lots"}', "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": true}', "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "remaining_s": ' + b"9" * 4000 + b"}", "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "reason": "a\\u0000b"}', "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "reason": ""}', "invalid"),
    ("pumplink/devices/5/state", b'{"state": "on", "reason": 5}', "invalid"),
    ("pumplink/devices/5/availability", b"maybe", "invalid"),
    ("device/5/status", b"sideways", "invalid"),
    ("pumplink/devices/5/state", None, "invalid"),
]


@pytest.mark.parametrize("topic,payload,reason", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_messages_are_dropped_with_their_reason(topic, payload, reason):
    result, elapsed = timed(topic, payload)
    assert isinstance(result, Drop) and result.reason == reason, result
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"


def test_acks_are_never_taken_from_retained_messages():
    # A retained ack would confirm whatever command is pending at every reconnect.
    assert parse("device/5/ack", b"ok", retained=True).reason == "retained_ack"
    assert parse("pumplink/devices/5/ack", b'{"id": "a", "ok": true}', retained=True).reason == "retained_ack"


def test_an_ack_error_text_is_bounded_and_storable():
    r = parse("pumplink/devices/5/ack", json.dumps({"id": "a", "ok": False, "error": "x\x00y" * 500}).encode())
    assert len(r.message.error) == 200 and "\x00" not in r.message.error
    r = parse("pumplink/devices/5/ack", b'{"id": "a", "ok": false, "error": {"code": 7}}')
    assert r.message.error == '{"code": 7}'


def test_the_worst_payloads_cost_little():
    worst = [b"[" * MAX_PAYLOAD_BYTES, b'"' + b"\\" * (MAX_PAYLOAD_BYTES - 2) + b'"', b"[" * 10_000_000,
             b'{"state": "on", "remaining_s": ' + b"9" * (MAX_PAYLOAD_BYTES - 40) + b"}"]
    for payload in worst:
        best = min(timed("pumplink/devices/5/state", payload)[1] for _ in range(3))
        assert best < 0.01, f"{payload[:20]!r}…: {best * 1000:.2f} ms"


# --- properties: any topic, any bytes, any JSON ----------------------------------------------
DIGITS = st.characters(categories=["Nd", "No"])  # every Unicode digit, ², ٣, ５ …
LEVEL = st.one_of(st.text(max_size=12), st.text(DIGITS, min_size=1, max_size=12),
                  st.sampled_from(["+", "#", "", "0", "05", "ack", "state", "status", "availability", "command"]))
TOPICS = st.one_of(
    st.text(max_size=80),
    st.lists(LEVEL, max_size=6).map("/".join),
    st.builds(lambda base, levels: "/".join([base, *levels]),
              st.sampled_from([f"{PREFIX}/devices", LEGACY, PREFIX]), st.lists(LEVEL, max_size=4)),
    st.binary(max_size=80),
)


@FAST
@given(TOPICS, st.binary(max_size=6000), st.booleans())
def test_any_topic_and_any_bytes_give_a_bounded_result(topic, payload, retained):
    assert_bounded(*timed(topic, payload, retained))


@FAST
@given(st.sampled_from(["ack", "state", "availability"]), st.text(DIGITS, min_size=1, max_size=4))
def test_only_ascii_digits_are_device_ids(kind, device):
    topic = f"{PREFIX}/devices/{device}/{kind}"
    canonical = device.isascii() and device.isdigit() and device[0] != "0"
    result = parse(topic, b"{}")
    if not canonical:
        assert isinstance(result, Drop) and result.reason == "device_id"
    assert Topics(PREFIX, LEGACY).parse(topic) == (("pumplink", int(device), kind) if canonical else None)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20) | st.sampled_from(["on", "off", "command", "timer", "a1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "ok", "state", "reason", "remaining_s", "error", "x"]) | st.text(max_size=5),
        inner, max_size=6),
    max_leaves=40,
)


@FAST
@given(st.sampled_from(["ack", "state"]), JSON)
def test_any_json_gives_a_bounded_result(kind, value):
    payload = json.dumps(value).encode()  # NaN and Infinity come out as the non-JSON tokens
    result, elapsed = timed(f"{PREFIX}/devices/3/{kind}", payload)
    assert_bounded(result, elapsed)


@FAST
@given(st.integers(min_value=1, max_value=999_999_999),
       st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True)),
       st.sampled_from(["on", "off"]))
def test_state_numbers_are_finite_and_in_range(device_id, remaining, state):
    result = parse(f"{PREFIX}/devices/{device_id}/state", json.dumps({"state": state, "remaining_s": remaining}).encode())
    if isinstance(result, Inbound):
        assert result.device_id == device_id and result.message.state == state
        assert 0 <= result.message.remaining_s <= 7 * 24 * 3600
    else:
        assert result.reason in ("json", "invalid")


@FAST
@given(st.integers(min_value=1, max_value=200_000))
def test_nesting_of_any_depth_is_bounded(depth):
    for payload in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        result, elapsed = timed(f"{PREFIX}/devices/3/state", payload)
        assert_bounded(result, elapsed)
        assert isinstance(result, Drop)
