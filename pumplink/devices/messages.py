"""Messages sent to actors with ``tell``: small immutable values."""

from __future__ import annotations

import dataclasses

import pykka


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
class Ring:
    """Messages from the MQTT link wait in the device's doorbell (doorbell.py)."""


@dataclasses.dataclass(frozen=True)
class Replay:
    """Try the messages that waited for the database again."""


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """A schedule's run, told to its device; the device tells ``reply_to`` a ``RunSettled``."""

    run_id: int
    schedule_id: int
    user_id: int
    duration_s: int
    reply_to: pykka.ActorRef


@dataclasses.dataclass(frozen=True)
class RunSettled:
    """A device's answer to a ``RunRequest``: the activation's view, or why there is none."""

    run_id: int
    schedule_id: int
    activation: dict | None
    error: BaseException | None


@dataclasses.dataclass(frozen=True)
class Watch:
    """Cluster mode, to the MQTT link: subscribe these devices' topics (their retained state
    comes with them), e.g. the devices of a partition this node took."""

    topics: tuple[tuple[str, ...], ...]  # per device


@dataclasses.dataclass(frozen=True)
class Unwatch:
    """Cluster mode, to the MQTT link: these topics' devices are no longer this node's."""

    topics: tuple[str, ...]
