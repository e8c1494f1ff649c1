"""The one parser of every inbound MQTT message: a value, or a reason to drop it; it never raises.

It runs on paho's network thread, so it must be cheap and bounded whatever a controller (or
an attacker holding a controller's login) sends: the payload size is checked before anything
is decoded, JSON nesting is checked before ``json.loads`` could recurse, device ids are ASCII
digits only (``int("²")`` raises, ``"²".isdigit()`` is True), and numbers must be finite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

from pumplink.devices.messages import Ack, Availability, StateReport

MAX_PAYLOAD_BYTES = 4096  # state and ack JSON are < 200 bytes; the broker example allows no more
MAX_TOPIC_CHARS = 512
MAX_JSON_DEPTH = 4  # a state or ack object holds no nested values at all; leave a little room
MAX_COMMAND_ID = 64  # the server's ids are 36-character UUIDs
MAX_REASON = 32
MAX_ERROR_TEXT = 200
MAX_REMAINING_S = 7 * 24 * 3600  # longer than any run the server sends

# Canonical ids only: no leading zero ("05" would alias device 5), no Unicode digits, at most
# 9 digits (a PostgreSQL integer).
_DEVICE_ID = re.compile(r"[1-9][0-9]{0,8}")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Every reason a message may be dropped for; the metric's label takes only these.
DROP_REASONS = ("empty", "topic", "device_id", "kind", "retained_ack", "too_large", "utf8", "too_deep", "json", "invalid",
                "internal", "unknown_device", "wrong_protocol")

PUMPLINK_KINDS = ("ack", "state", "availability")
LEGACY_KINDS = ("ack", "status")


@dataclasses.dataclass(frozen=True)
class Inbound:
    """A well-formed message for ``device_id``, which arrived on a ``protocol`` topic."""

    protocol: str  # pumplink | legacy
    device_id: int
    kind: str
    message: object  # Ack | StateReport | Availability


@dataclasses.dataclass(frozen=True)
class Drop:
    reason: str  # one of DROP_REASONS
    detail: str


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str):
        # A repr of 80 odd characters can be 800 long: logs get a bounded line whatever came in.
        super().__init__(detail if len(detail) <= 240 else detail[:237] + "...")
        self.reason = reason


def parse_inbound(prefix: str, legacy_base: str, topic: str | bytes, payload: bytes, retained: bool) -> Inbound | Drop:
    """Parse one inbound message; returns ``Inbound`` or ``Drop``, and never raises."""
    try:
        protocol, device_id, kind = parse_topic(prefix, legacy_base, topic)
        if kind == "ack" and retained:
            # A retained ack would be replayed at every reconnect and confirm whatever command is
            # pending then (a legacy ack carries no id): never trust one.
            raise _Invalid("retained_ack", "acks are never retained")
        return Inbound(protocol, device_id, kind, parse_payload(protocol, kind, payload, retained))
    except _Invalid as exc:
        return Drop(exc.reason, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug here must drop one message, not kill paho's thread
        return Drop("internal", f"{type(exc).__name__} while parsing")


def parse_topic(prefix: str, legacy_base: str, topic: str | bytes) -> tuple[str, int, str]:
    """``(protocol, device_id, kind)``; raises ``_Invalid`` for anything else."""
    if isinstance(topic, (bytes, bytearray)):
        if len(topic) > MAX_TOPIC_CHARS * 4:
            raise _Invalid("topic", "topic too long")
        try:
            topic = bytes(topic).decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid("topic", "topic is not UTF-8") from None
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC_CHARS:
        raise _Invalid("topic", "topic too long")
    for protocol, head, kinds in (("pumplink", f"{prefix}/devices/", PUMPLINK_KINDS),
                                  ("legacy", f"{legacy_base}/", LEGACY_KINDS)):
        if not topic.startswith(head):
            continue
        parts = topic[len(head):].split("/")
        if len(parts) != 2:
            raise _Invalid("topic", f"unexpected topic {topic[:80]!r}")
        device, kind = parts
        if not _DEVICE_ID.fullmatch(device):
            raise _Invalid("device_id", f"device id {device[:20]!r} is not a plain number")
        if kind not in kinds:
            raise _Invalid("kind", f"unknown {protocol} topic kind {kind[:20]!r}")
        return protocol, int(device), kind
    raise _Invalid("topic", f"unexpected topic {topic[:80]!r}")


def parse_payload(protocol: str, kind: str, payload: bytes, retained: bool):
    """An actor message (Ack, StateReport, Availability); raises ``_Invalid`` when malformed."""
    if not isinstance(payload, (bytes, bytearray)):
        raise _Invalid("invalid", "payload is not bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Invalid("too_large", f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD_BYTES})")
    if protocol == "legacy" and kind == "ack":
        return Ack(command_id=None, ok=True, state=None)  # the Go firmware's ack is any payload
    if not payload:
        # How a retained message is deleted: someone cleared a state or availability.
        raise _Invalid("empty", "empty payload (a retained message cleared)")
    try:
        text = bytes(payload).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _Invalid("utf8", "payload is not UTF-8") from None
    if protocol == "legacy":  # status
        if text.lower() not in ("on", "off"):
            raise _Invalid("invalid", f"legacy status {text[:40]!r} is not on/off")
        return StateReport(state=text.lower(), reason="status", remaining_s=None, retained=bool(retained))
    if kind == "availability":
        if text not in ("online", "offline"):
            raise _Invalid("invalid", f"availability {text[:40]!r} is not online/offline")
        return Availability(online=text == "online", retained=bool(retained))
    body = _json_object(text)
    if kind == "ack":
        return _ack(body)
    return _state(body, bool(retained))


def _json_object(text: str) -> dict:
    if _too_deep(text, MAX_JSON_DEPTH):
        raise _Invalid("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise _Invalid("json", f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise _Invalid("invalid", "payload is not a JSON object")
    return body


def _too_deep(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``; linear, no recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _clean_text(value, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return _CONTROL.sub(" ", text)[:limit]  # NUL cannot be stored in PostgreSQL text


def _ack(body: dict) -> Ack:
    command_id, ok, state, error = body.get("id"), body.get("ok"), body.get("state"), body.get("error")
    if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_COMMAND_ID or _CONTROL.search(command_id):
        raise _Invalid("invalid", "ack needs a string id")
    if not isinstance(ok, bool):
        raise _Invalid("invalid", "ack needs a boolean ok")
    if state is not None and state not in ("on", "off"):
        raise _Invalid("invalid", f"ack state must be on or off, got {str(state)[:20]!r}")
    return Ack(command_id=command_id, ok=ok, state=state,
               error=_clean_text(error, MAX_ERROR_TEXT) if error is not None else None)


def _state(body: dict, retained: bool) -> StateReport:
    state, reason, remaining = body.get("state"), body.get("reason", "command"), body.get("remaining_s")
    if state not in ("on", "off"):
        raise _Invalid("invalid", f"state must be on or off, got {str(state)[:20]!r}")
    if not isinstance(reason, str) or not _TOKEN.fullmatch(reason):
        raise _Invalid("invalid", "reason must be a short word")
    if remaining is not None:
        if isinstance(remaining, bool) or not isinstance(remaining, (int, float)):
            raise _Invalid("invalid", "remaining_s must be a number")
        if not 0 <= remaining <= MAX_REMAINING_S:
            raise _Invalid("invalid", "remaining_s out of range")
    return StateReport(state=state, reason=reason[:MAX_REASON], remaining_s=remaining, retained=retained)
