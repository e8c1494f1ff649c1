"""Messages sent to actors with ``tell``: small immutable values."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Ack:
    command_id: str | None  # None for legacy controllers, whose acks carry no id
    ok: bool
    state: str | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class StateReport:
    state: str  # on | off
    reason: str
    remaining_s: float | None
    retained: bool


@dataclasses.dataclass(frozen=True)
class Availability:
    online: bool
    retained: bool


@dataclasses.dataclass(frozen=True)
class BrokerConnected:
    """The MQTT link came (back) up; retained state follows."""


@dataclasses.dataclass(frozen=True)
class TimerFired:
    kind: str  # ack | off
    token: object


@dataclasses.dataclass(frozen=True)
class Publish:
    topic: str
    payload: str
    qos: int = 1


@dataclasses.dataclass(frozen=True)
class Replay:
    """Try the messages that waited for the database again."""
