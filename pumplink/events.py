"""Events the actors publish for listeners (WebSocket broadcaster, push notifier, metrics).

Events are small immutable values delivered with ``tell`` so a slow listener never blocks
the actor that published them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading

import pykka

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DeviceStateChanged:
    device_id: int
    state: str
    previous: str
    available: bool | None
    activation_id: int | None
    reason: str
    at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ActivationChanged:
    activation: dict  # the API's view of the activation, already serialisable
    at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ScheduleChanged:
    schedule_id: int
    device_id: int
    change: str  # created | updated | deleted | fired | missed
    detail: dict
    at: dt.datetime
    # The schedule's owner: only they and admins are sent the event. When a publisher leaves it
    # out, the broadcaster finds it (detail, its memory, the database) or tells admins only.
    user_id: int | None = None


@dataclasses.dataclass(frozen=True)
class UserAccessChanged:
    """An account's role changed (``role``) or it was deleted (``role`` None), at ``at``.

    Published after the change is committed. The broadcaster closes the user's sockets on
    deletion or demotion to pending and filters by the new role otherwise.
    """

    user_id: int
    role: str | None
    at: dt.datetime


@dataclasses.dataclass(frozen=True)
class SitesChanged:
    """Memberships (of ``user_id``, or of anyone when None) or a device's site changed, committed.
    The broadcaster reads who may see which device again."""

    user_id: int | None
    at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Audience:
    """Who an alert is for: every approved user, the admins, or one user (``user_id``), and
    with ``also_admins`` the admins as well. The notifier resolves it against the accounts as
    they are when it sends (a pending or deleted account is told nothing), and for an alert
    about a device within its site: only members are told, and its managers count as admins."""

    group: str  # approved | admins | user
    user_id: int | None = None
    also_admins: bool = False

    @classmethod
    def approved(cls) -> "Audience":
        return cls("approved")

    @classmethod
    def admins(cls) -> "Audience":
        return cls("admins")

    @classmethod
    def user(cls, user_id: int | None, also_admins: bool = False) -> "Audience":
        """One user; a run without one (a system run, a deleted user) is the admins' to know."""
        if user_id is None:
            return cls("admins")
        return cls("user", user_id, also_admins)

    @classmethod
    def of(cls, value: "Audience | str") -> "Audience":
        """Also the older spelling: ``approved``, ``admins``, ``user:<id>``; anything else is nobody."""
        if isinstance(value, Audience):
            return value
        if value in ("approved", "admins"):
            return cls(value)
        if isinstance(value, str) and value.startswith("user:") and value[5:].isascii() and value[5:].isdigit():
            return cls("user", int(value[5:]))
        return cls("nobody")


@dataclasses.dataclass(frozen=True)
class Alert:
    """Something people should be told about by push.

    ``key`` identifies the event exactly once (the notifier de-duplicates on it); ``audience``
    an ``Audience`` (the strings ``approved``, ``admins``, ``user:<id>`` are still taken).
    """

    key: str
    kind: str  # device_on | activation_failed | force_shutdown | schedule_missed | ack_timeout | device_flapping(_live)
    device_id: int | None
    title: str
    body: str
    audience: Audience
    extra_user_id: int | None = None
    data: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.audience, Audience):
            object.__setattr__(self, "audience", Audience.of(self.audience))


class EventBus:
    """Routes each event by its type, with ``tell``, to the listeners subscribed to that type.

    A listener names the events it handles when it subscribes, so it is never woken (nor opens a
    transaction or checks out a connection) for an event it would only ignore.
    """

    def __init__(self):
        self._listeners: dict[type, list[pykka.ActorRef]] = {}
        self._lock = threading.Lock()

    def subscribe(self, ref: pykka.ActorRef, *event_types: type) -> None:
        if not event_types:
            raise ValueError("a listener names the event types it handles")
        with self._lock:
            for event_type in event_types:
                refs = self._listeners.setdefault(event_type, [])
                if ref not in refs:
                    refs.append(ref)

    def unsubscribe(self, ref: pykka.ActorRef) -> None:
        with self._lock:
            for refs in self._listeners.values():
                if ref in refs:
                    refs.remove(ref)

    def listeners(self, event_type: type) -> list[pykka.ActorRef]:
        """Who hears ``event_type`` (a subscription to a base class covers its subclasses)."""
        with self._lock:
            found: list[pykka.ActorRef] = []
            for cls in event_type.__mro__:
                for ref in self._listeners.get(cls, ()):
                    if ref not in found:
                        found.append(ref)
            return found

    def publish(self, event) -> None:
        for ref in self.listeners(type(event)):
            try:
                ref.tell(event)
            except pykka.ActorDeadError:
                log.debug("listener %s is gone; event %s dropped", ref, type(event).__name__)
