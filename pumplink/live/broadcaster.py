"""BroadcasterActor: fans device, activation and schedule events out to WebSocket clients.

The actor never touches a socket: each client is a ``live.connection.Connection`` with a bounded outbox
and its own writer greenlet. Every event is authorized for each receiver by the rule REST
applies (``audience_of``), and a user's sockets follow their account: closed with 1008 on
deletion or demotion to pending, re-filtered on other role changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging

import pykka

from pumplink.storage import models as m
from pumplink.clock import iso
from pumplink.storage.db import OPERATIONAL_ERRORS
from pumplink.events import (ActivationChanged, Alert, Audience, DeviceStateChanged, ScheduleChanged, SitesChanged,
                             UserAccessChanged)
from pumplink.live.debounce import HOLD_S, Debouncer
from pumplink.sites.reach import Reach
from pumplink.runtime import Runtime
from pumplink.timers import Timer, tell_later
from pumplink.live.connection import Connection
from pumplink.live.frames import ADMINS, audience_of, dumps, event_body, legacy_frame, lost_access, owner_or_admins, receives

log = logging.getLogger(__name__)

__all__ = ["BroadcasterActor", "Connection", "Register", "Unregister", "Subscribe", "Seen", "CloseAll"]

# The app reads 1008 as "logged out": used only when the account itself lost access.
CLOSE_ACCESS = 1008
# Private-use code (never 1008): this account opened more sockets than allowed; its oldest goes.
CLOSE_TOO_MANY = 4029
# Access changes remembered for sockets that authenticated before, and register after, a change.
RECENT_ACCESS_S = 60.0
# Backstop re-check of connected users' roles: users per query.
RECHECK_BATCH = 500
# Schedule owners remembered (a schedule's owner never changes); forgotten wholesale past this.
OWNER_CACHE_LIMIT = 100_000


@dataclasses.dataclass(frozen=True)
class Register:
    connection: Connection


@dataclasses.dataclass(frozen=True)
class Unregister:
    connection: Connection


@dataclasses.dataclass(frozen=True)
class Subscribe:
    connection: Connection
    device_ids: frozenset[int] | None


@dataclasses.dataclass(frozen=True)
class Seen:
    """The endpoint read this connection's account again (a JSON client re-authenticated)."""

    connection: Connection
    role: str | None
    at: dt.datetime


@dataclasses.dataclass(frozen=True)
class CloseAll:
    code: int
    reason: str


@dataclasses.dataclass(frozen=True)
class FlushHeld:
    """The debounce timer of a flapping device: send its latest state."""

    device_id: int


@dataclasses.dataclass(frozen=True)
class Remote:
    """An event that happened on another node (cluster mode): sent to clients here, never relayed
    again, and no alert is raised for it here (its owner raises those)."""

    event: object


@dataclasses.dataclass(frozen=True)
class Recheck:
    """The timer's tick: read the roles of every connected account from the database."""


class BroadcasterActor(pykka.ThreadingActor):
    """Keeps the registered clients and their subscriptions; numbers and fans out every event."""

    # The bus events it handles (the actor system subscribes it to these and no others).
    EVENTS = (DeviceStateChanged, ActivationChanged, ScheduleChanged, UserAccessChanged, SitesChanged)

    def __init__(self, rt: Runtime):
        super().__init__()
        self.rt = rt
        self.clock = rt.clock
        self.legacy_device_id = rt.config.legacy_device_id
        self.max_per_user = rt.config.max_ws_per_user
        self.recheck_s = rt.config.ws_role_recheck_s
        self.clients: dict[int, Connection] = {}
        self.by_user: dict[int, dict[int, Connection]] = {}
        self.recent: dict[int, tuple[str | None, dt.datetime]] = {}  # user id -> (role, at)
        self.owners: dict[int, int | None] = {}  # schedule id -> owner
        self._ids = itertools.count(1)
        self.last_event_id = 0
        self.metrics = getattr(rt, "metrics", None)
        self.reach = Reach(rt.db)
        self.debounce = Debouncer(rt.config.live_changes_per_s)
        self._timer: Timer | None = None
        self.relay = None  # cluster mode: cluster.events.ClusterEvents, to and from the other nodes

    def on_start(self) -> None:
        self._arm()
        if self.rt.config.clustered:
            from pumplink.cluster.events import ClusterEvents  # paho, only in cluster mode

            ref = self.actor_ref
            self.relay = ClusterEvents(self.rt.config, lambda event: ref.tell(Remote(event)), self.metrics).start()

    def on_receive(self, message):
        try:
            return self._dispatch(message)
        except Exception:
            # An exception here would kill the actor and every client's live view with it.
            log.exception("broadcaster failed handling %r", message)
            return None

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.relay is not None:
            self.relay.stop()
        self._close_all(1001, "The server is shutting down.")

    def _dispatch(self, message, local: bool = True):
        if local and self.relay is not None and isinstance(message, self.EVENTS):
            self.relay.publish(message)
        if isinstance(message, Remote):
            if isinstance(message.event, self.EVENTS):
                self._dispatch(message.event, local=False)
        elif isinstance(message, DeviceStateChanged):
            self._state_changed(message, local)
        elif isinstance(message, FlushHeld):
            self._flush_held(message.device_id)
        elif isinstance(message, (ActivationChanged, ScheduleChanged)):
            self._fan_out(message)
        elif isinstance(message, UserAccessChanged):
            self._access_changed(message)
        elif isinstance(message, SitesChanged):
            self.reach.forget()
        elif isinstance(message, Register):
            self._register(message.connection)
            return self.last_event_id
        elif isinstance(message, Unregister):
            self._forget(message.connection)
        elif isinstance(message, Subscribe):
            conn = message.connection
            conn.device_ids = message.device_ids
            ids = sorted(message.device_ids) if message.device_ids is not None else None
            # Everything after this frame in the stream follows the new subscription.
            conn.offer(dumps({"type": "subscribed", "device_ids": ids, "after_id": self.last_event_id}))
        elif isinstance(message, Seen):
            if message.connection.id in self.clients:
                self._apply(message.connection, message.role, message.at)
        elif isinstance(message, Recheck):
            try:
                self._recheck()
            finally:
                self._arm()
        elif isinstance(message, CloseAll):
            self._close_all(message.code, message.reason)
        return None

    # --- clients -------------------------------------------------------------------------------
    def _register(self, conn: Connection) -> None:
        self.clients[conn.id] = conn
        if conn.user_id is not None:
            mine = self.by_user.setdefault(conn.user_id, {})
            mine[conn.id] = conn
            # A change between the endpoint's reading of the account and now is not missed.
            known = self.recent.get(conn.user_id)
            if known is not None and (conn.role_at is None or known[1] > conn.role_at):
                self._apply(conn, known[0], known[1])
            while len(mine) > self.max_per_user and conn.id in self.clients:
                oldest = mine[min(mine)]
                self._drop(oldest, CLOSE_TOO_MANY,
                           f"This account has more than {self.max_per_user} live connections; "
                           "this one, the oldest, was closed.")
        self._count()

    def _forget(self, conn: Connection) -> None:
        self.clients.pop(conn.id, None)
        mine = self.by_user.get(conn.user_id)
        if mine is not None:
            mine.pop(conn.id, None)
            if not mine:
                del self.by_user[conn.user_id]
        self._count()

    def _drop(self, conn: Connection, code: int, reason: str) -> None:
        log.info("websocket %s of user %s closed (%s): %s", conn.id, conn.user_id, code, reason)
        self._forget(conn)
        conn.close(code, reason)

    # --- access ----------------------------------------------------------------------------------
    def _access_changed(self, event: UserAccessChanged) -> None:
        self.recent[event.user_id] = (event.role, event.at)
        horizon = event.at - dt.timedelta(seconds=RECENT_ACCESS_S)
        for user_id in [u for u, (_, at) in self.recent.items() if at < horizon]:
            del self.recent[user_id]
        for conn in list(self.by_user.get(event.user_id, {}).values()):
            self._apply(conn, event.role, event.at)

    def _apply(self, conn: Connection, role: str | None, at: dt.datetime) -> None:
        """The account's role as read at ``at``; an older reading never replaces a newer one."""
        if conn.role_at is not None and at < conn.role_at:
            return
        old, conn.role, conn.role_at = conn.role, role, at
        if lost_access(old, role):
            why = "This account was deleted." if role is None else \
                "This account is waiting for an administrator's approval again."
            self._drop(conn, CLOSE_ACCESS, why)
        elif old != role:
            log.info("websocket %s of user %s now filtered as %s", conn.id, conn.user_id, role)

    def _arm(self) -> None:
        self._timer = tell_later(self.actor_ref, self.recheck_s, Recheck())

    def _recheck(self) -> None:
        """Backstop for role changes made outside this process (another server, the CLI, SQL)."""
        self.reach.forget()
        users = sorted(self.by_user)
        if not users:
            return
        at = self.clock.now()
        roles: dict[int, str] = {}
        try:
            with self.rt.db.connection_context():
                for start in range(0, len(users), RECHECK_BATCH):
                    chunk = users[start:start + RECHECK_BATCH]
                    roles.update(m.User.select(m.User.id, m.User.role).where(m.User.id.in_(chunk)).tuples())
        except OPERATIONAL_ERRORS as exc:
            # The database being away is not the account losing access.
            log.warning("re-checking the roles of %d connected accounts failed: %s", len(users), exc)
            return
        for user_id in users:
            for conn in list(self.by_user.get(user_id, {}).values()):
                self._apply(conn, roles.get(user_id), at)

    def _schedule_owner(self, event: ScheduleChanged) -> int | None:
        owner = event.detail.get("user_id") if isinstance(event.detail, dict) else None
        if owner_or_admins(owner) == ADMINS:
            owner = self.owners.get(event.schedule_id)
        if owner is None and event.change != "deleted":
            try:
                with self.rt.db.connection_context():
                    owner = (m.Schedule.select(m.Schedule.user).where(m.Schedule.id == event.schedule_id)
                             .scalar())
            except OPERATIONAL_ERRORS as exc:
                log.warning("owner of schedule %s unknown (%s); its event goes to admins only",
                            event.schedule_id, exc)
                return None
        if event.change == "deleted":
            self.owners.pop(event.schedule_id, None)
        elif owner is not None:
            if len(self.owners) >= OWNER_CACHE_LIMIT:
                self.owners.clear()
            self.owners[event.schedule_id] = owner
        return owner

    # --- events ----------------------------------------------------------------------------------
    def _state_changed(self, event: DeviceStateChanged, local: bool = True) -> None:
        now = self.clock.monotonic()
        send, flagged = self.debounce.offer(event.device_id, event, now)
        if send is not None:
            self._fan_out(send)
            return
        if self.metrics is not None:
            self.metrics.live_debounced.inc()
        if flagged:
            self._flagged(event, alert=local)  # the device's owner alerts, once
            tell_later(self.actor_ref, HOLD_S, FlushHeld(event.device_id))

    def _flush_held(self, device_id: int) -> None:
        event, count, still = self.debounce.flush(device_id, self.clock.monotonic())
        if event is not None:
            self._fan_out(event, skipped=count - 1)
        if still:
            tell_later(self.actor_ref, HOLD_S, FlushHeld(device_id))
        else:
            log.info("device %s changes state at a calm pace again; its live events are no longer debounced", device_id)
            self._count_flapping()

    def _flagged(self, event: DeviceStateChanged, alert: bool = True) -> None:
        limit = self.rt.config.live_changes_per_s
        log.warning("device %s changed state more than %d times within a second; its live events are debounced",
                    event.device_id, limit)
        self._count_flapping()
        if not alert:
            return
        self.rt.bus.publish(Alert(
            key=f"device_flapping_live:{event.device_id}:{iso(event.at)}", kind="device_flapping_live",
            device_id=event.device_id, title=f"Device {event.device_id} is flapping",
            body=f"Device {event.device_id} changed state more than {limit} times within a second. Every change is "
                 f"recorded; live views show its latest state a few times a second until it calms down.",
            audience=Audience.admins()))

    def _count_flapping(self) -> None:
        if self.metrics is not None:
            self.metrics.flapping_live.set(self.debounce.flapping())

    def _fan_out(self, event, skipped: int = 0) -> None:
        described = event_body(event, next(self._ids), skipped)
        if described is None:
            return
        device_id, body = described
        self.last_event_id = body["id"]
        audience = audience_of(event, self._schedule_owner)
        text = dumps(body)
        legacy = None
        if isinstance(event, DeviceStateChanged) and event.device_id == self.legacy_device_id:
            legacy = legacy_frame(event.state)
        # A device's state waiting in a client's outbox is replaced by its newer state.
        key = ("state", device_id) if isinstance(event, DeviceStateChanged) else None
        gone = []
        for conn in self.clients.values():
            if conn.legacy:
                if (legacy is not None and self.reach.may_see_device(conn.user_id, conn.role, device_id)
                        and not conn.offer(legacy, "legacy")):
                    gone.append(conn)
            elif (conn.wants(device_id) and receives(self.reach, conn.role, conn.user_id, device_id, audience)
                  and not conn.offer(text, key)):
                gone.append(conn)
        for conn in gone:
            self._forget(conn)

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.ws_clients.set(len(self.clients))

    def _close_all(self, code: int, reason: str) -> None:
        for conn in list(self.clients.values()):
            conn.close(code, reason)
