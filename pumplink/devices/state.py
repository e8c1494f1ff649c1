"""What a device's machine knows (its state) and what it asks the shell to do (effects).

Plain values: no peewee, no pykka, no MQTT. Records (activations, sessions) are the machine's
own copies of rows. A record created by the machine has ``id`` None until the shell has
written it: effects hold the record itself, and the shell reads its id when it carries a
later effect out (a log row of a session opened in the same step, the ON of a new run).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

from pumplink.events import Audience

if TYPE_CHECKING:
    from pumplink.quota import rules as quota_rules


# --- records ----------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class Activation:
    """A run: queued -> starting -> running -> completed | stopped | failed; queued -> cancelled.
    Times are stored as the database holds them (naive UTC, clock.to_db)."""

    device_id: int
    user_id: int | None
    schedule_id: int | None
    duration_s: int
    source: str
    created_at: dt.datetime
    state: str = "queued"
    id: int | None = None
    reason: str | None = None
    ended_by: str | None = None
    command_id: str | None = None
    started_at: dt.datetime | None = None
    ends_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None


@dataclasses.dataclass(eq=False)
class Session:
    """What the pump did: from its confirmed ON to its confirmed OFF."""

    started_at: dt.datetime
    start_cause: str
    activation: Activation | None = None
    activation_id: int | None = None  # of a session read from the database
    user_id: int | None = None
    intended_s: int | None = None
    id: int | None = None
    ended_at: dt.datetime | None = None
    actual_s: float | None = None
    end_reason: str | None = None

    @property
    def run_id(self) -> int | None:
        return self.activation.id if self.activation is not None else self.activation_id


@dataclasses.dataclass
class Device:
    """The device's row as far as the machine uses it."""

    id: int
    name: str
    protocol: str
    daily_quota_minutes: float | None
    off_owed_since: dt.datetime | None = None
    flapping_since: dt.datetime | None = None


@dataclasses.dataclass(eq=False)
class Command:
    """An ON/OFF to publish. Tracked ones (``id`` set) await their ack as ``DeviceState.pending``."""

    action: str  # on | off
    sent_at: dt.datetime  # of the first send (a re-send is the same payload)
    id: str | None = None
    activation: Activation | None = None
    duration_s: int | None = None
    reason: str = "owed"  # why an OFF was sent: completed | force | cancelled | owed | ...
    actor: str = "system"
    attempts: int = 1


class Starts(collections.deque):
    """Start times of pump-started sessions, oldest first. Counting the trailing hour's drops the
    older ones, each once, instead of filtering every one at every report (a pump flapping for an
    hour holds a million)."""

    def add(self, at: dt.datetime) -> None:
        if self and at < self[-1]:
            bisect.insort(self, at)  # the clock was set back: still in order
        else:
            self.append(at)

    def count_after(self, since: dt.datetime) -> int:
        while self and self[0] <= since:
            self.popleft()
        return len(self)


@dataclasses.dataclass
class DeviceState:
    device: Device
    available: bool | None = None
    reported: str | None = None  # last ON/OFF the pump itself confirmed
    shown: str = "unknown"  # the state people see (rules.derive_state)
    queue: collections.deque[Activation] = dataclasses.field(default_factory=collections.deque)
    current: Activation | None = None  # starting or running
    session: Session | None = None
    pending: Command | None = None
    unconfirmed_on: Activation | None = None  # an ON sent before a crash, never acknowledged
    adopting: Activation | None = None  # ... whose run waits for the pump's retained report (current too)
    off_owed: bool = False  # an OFF was never confirmed: sent again until it is (off_owed_since)
    off_stuck: bool = False  # a whole round of an OFF failed: no new runs
    owed_round: int = 0  # rounds of the owed OFF sent so far: the re-send interval doubles
    owed_token: int = 0  # a stale owed/flap timer carries an older token: ignored
    flap_token: int = 0
    owed_armed: bool = False
    flap_armed: bool = False
    manual_starts: Starts = dataclasses.field(default_factory=Starts)  # pump-started sessions, last hour


# --- what the shell gives the machine ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    ack_timeout_s: float
    ack_retries: int
    queue_limit: int
    manual_runs_per_hour: int
    daily_quota_minutes: float  # when the device has none of its own


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What recovery starts from (records.DeviceRecords, as values)."""

    device: Device
    session: Session | None
    activations: list[Activation]
    manual_starts: list[dt.datetime]


@dataclasses.dataclass(frozen=True)
class Usage:
    """Today's numbers the shell read for a quota check (the user's span devices)."""

    device_used_s: float
    user_quota_minutes: float | None = None  # None: the user has no quota (or there is no user)
    user_used_s: float = 0.0
    user_reserved_s: float = 0.0
    member: "quota_rules.Limit | None" = None  # the user's per-member quota at the device's site


@dataclasses.dataclass(frozen=True)
class Refusal:
    code: str  # device_offline | off_unconfirmed | broker_unavailable | queue_full | quota_exhausted
    quota: str | None = None  # device | member | user
    free_s: float = 0.0
    queued: int = 0
    reserved_s: float = 0.0


# --- effects, carried out by the shell in order -----------------------------------------------
@dataclasses.dataclass(frozen=True)
class Publish:
    """An OFF goes at once; an ON only once the rows recording it are durable."""

    command: Command


# Row effects and RunChanged keep the values of the moment they were made (a later step of the
# same call may change the record again); the record itself is kept for its id.
@dataclasses.dataclass(frozen=True)
class Insert:
    record: Activation | Session  # the shell sets its id
    row: Activation | Session = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "row", dataclasses.replace(self.record))

    def with_values(self, values: dict) -> "Insert":
        """The same insert with a later update's values in its row (the shell folds them)."""
        folded = Insert(self.record)
        object.__setattr__(folded, "row", dataclasses.replace(self.row, **values))
        return folded


@dataclasses.dataclass(frozen=True)
class Update:
    record: Activation | Session
    fields: tuple[str, ...]
    values: dict = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "values", {f: getattr(self.record, f) for f in self.fields})


@dataclasses.dataclass(frozen=True)
class UpdateDevice:
    fields: tuple[str, ...]  # of DeviceState.device
    values: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class WriteLog:
    event: str
    cause: str
    actor: str | None
    at: dt.datetime
    session: Session | None = None
    activation: Activation | None = None
    detail: str | None = None


@dataclasses.dataclass(frozen=True)
class Arm:
    kind: str  # ack | off | owed | flap; one timer of each kind at a time
    token: object
    delay_s: float


@dataclasses.dataclass(frozen=True)
class Cancel:
    kind: str


@dataclasses.dataclass(frozen=True)
class StateChanged:
    previous: str
    state: str
    available: bool | None
    activation: Activation | None
    reason: str


@dataclasses.dataclass(frozen=True)
class RunChanged:
    activation: Activation
    seen: Activation = dataclasses.field(init=False, compare=False, repr=False)  # as it was then

    def __post_init__(self):
        object.__setattr__(self, "seen", dataclasses.replace(self.activation))


@dataclasses.dataclass(frozen=True)
class Alert:
    kind: str
    key: tuple  # parts joined by ":"; a record stands for its id
    title: str
    body: str
    audience: Audience


@dataclasses.dataclass(frozen=True)
class Count:
    metric: str  # activations | accepted | ack_latency
    labels: tuple[str, ...]
    value: float = 1.0


ROWS = (Insert, Update, UpdateDevice, WriteLog)
