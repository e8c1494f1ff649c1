"""DeviceActor: the only writer of one device's state, queue, running activation and session.

The activation is a decision ("run for N seconds", "stop now"); the session is a physical
fact (the pump said it is ON / OFF). An activation ends when the server decides it does and
sends OFF; its session closes when the pump confirms, so the actual duration is honest.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import json
import logging
import threading
import uuid

import pykka

from pumplink.storage import models as m
from pumplink.quota import usage
from pumplink.clock import from_db, iso, to_db
from pumplink.storage.db import OPERATIONAL_ERRORS
from pumplink.errors import Conflict, NotFound, TooManyRequests, Unavailable
from pumplink.events import ActivationChanged, Alert, Audience, DeviceStateChanged
from pumplink.gateway import Gateway
from pumplink.runtime import Runtime
from pumplink.views import activation_view
from pumplink.devices.messages import (
    Ack,
    Availability,
    BrokerConnected,
    Publish,
    Replay,
    RunRequest,
    RunSettled,
    StateReport,
    TimerFired,
)
from pumplink.devices import commands, machine, records
from pumplink.devices.records import DeviceRecords
from pumplink.devices.quota_check import UNKNOWN, Quotas
from pumplink.devices.safety import Flapping, OwedOff
from pumplink.timers import tell_later

log = logging.getLogger(__name__)

OPEN_STATES = usage.OPEN_STATES


REPLAY_S = 1.0  # while the database is away, try the backlog again this often


class DatabaseDown(Unavailable):
    """The database could not be reached; what was being done is not done."""

    def __init__(self):
        super().__init__("The database is not reachable right now; try again shortly.", "database_unavailable",
                         retry_after=5)


def transactional(method):
    """An ask of the API: earlier messages are caught up first, then one transaction."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._catch_up()
        return self._in_transaction(method, self, *args, **kwargs)

    return wrapper


@dataclasses.dataclass
class Pending:
    """A command waiting for its ack."""

    id: str
    action: str  # on | off
    topic: str
    payload: str
    activation_id: int | None
    reason: str  # why an OFF was sent: completed | force | cancelled | ...
    actor: str
    attempts: int = 1
    timer: threading.Timer | None = None
    sent_at: float = 0.0  # monotonic, of the first send
    sent_wall: dt.datetime | None = None


class DeviceActor(OwedOff, Flapping, Quotas, pykka.ThreadingActor):
    # Daemon threads: CPython tracks non-daemon ones in a list walked at every thread start, which
    # made starting 10,000 actors quadratic. Actors are stopped explicitly at shutdown anyway.
    use_daemon_thread = True

    def __init__(self, device_id: int, rt: Runtime, mqtt: pykka.ActorRef, preload: "DeviceRecords | None" = None):
        super().__init__()
        self.device_id = device_id
        self.preload = preload
        self.rt = rt
        self.db = rt.db
        self.config = rt.config
        self.clock = rt.clock
        self.mqtt = mqtt
        self.device: m.Device | None = None
        self.available: bool | None = None
        self.reported: str | None = None  # last ON/OFF the pump itself confirmed
        self.queue: collections.deque[m.Activation] = collections.deque()
        self.current: m.Activation | None = None  # starting or running
        self.session: m.Session | None = None
        self.pending: Pending | None = None
        self.off_timer: threading.Timer | None = None
        self.off_owed = False  # an OFF was never confirmed: send it again until it is (device.off_owed_since)
        self.off_stuck = False  # a whole round of an OFF failed (refused or unanswered): no new runs
        self.owed_timer: threading.Timer | None = None
        self.owed_round = 0  # rounds of the owed OFF sent so far: the re-send interval doubles
        self.flap_timer: threading.Timer | None = None
        self.owed_token = self.flap_token = 0  # a stale owed/flap timer carries an older token: ignored
        self.state = "unknown"
        # Messages that arrived while the database was away, replayed in order when it returns.
        self.backlog: collections.deque = collections.deque()
        self.replay_armed = False
        self.resync_needed = False  # the database failed mid-way: memory may be ahead of it
        self.unconfirmed_on: m.Activation | None = None  # an ON sent before a crash, never acknowledged
        self._deferred_on: list[tuple[str, str]] | None = None  # ONs waiting for their transaction

    # --- life cycle ------------------------------------------------------------------------
    def on_start(self) -> None:
        self.rt.metrics.device_state(None, self.state)
        preload, self.preload = self.preload, None
        if preload is None:
            with self.db.connection_context():
                preload = DeviceRecords.load(self.device_id)
        if preload.needs_writes(self.clock.now()):
            with self.db.connection_context():
                with self.db.atomic():
                    self._recover(preload)
        else:
            # The common start: nothing to close, so no connection is taken from the pool.
            self._recover(preload)

    def on_stop(self) -> None:
        self.rt.metrics.device_state(self.state, None)
        self.rt.metrics.queued.dec(len(self.queue))
        self._cancel_timer(self.off_timer)
        self._cancel_timer(self.owed_timer)
        self._cancel_timer(self.flap_timer)
        if self.pending:
            self._cancel_timer(self.pending.timer)

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("device %s actor failed: %s", self.device_id, exception_value)

    def _recover(self, rows: "DeviceRecords") -> None:
        """Reconcile the database with the clock before any request is accepted (API.md, Crash
        recovery); machine.recover decides, this carries it out."""
        self.device = rows.device
        now = self.clock.now()
        self.session = rows.session
        by_id = {act.id: act for act in rows.activations}
        plan = machine.recover(
            [machine.Run(a.id, a.state, from_db(a.ends_at) if a.ends_at else None) for a in rows.activations],
            session_activation_id=rows.session.activation_id if rows.session else None,
            has_session=rows.session is not None, protocol=rows.device.protocol,
            off_owed_before=rows.device.off_owed_since is not None, now=now)
        for act_id in plan.queued:
            self.queue.append(by_id[act_id])
            self.rt.metrics.queued.inc()
        if plan.resume is not None:
            act_id, remaining = plan.resume
            self.current = by_id[act_id]
            self.off_timer = tell_later(self.actor_ref, remaining, TimerFired("off", act_id))
            log.info("device %s activation %s resumes after restart: %.1fs left", self.device_id, act_id, remaining)
        for close in plan.close:
            act = by_id[close.id]
            if close.unconfirmed_on:
                self.unconfirmed_on = act  # its ON may have landed: a report of ON is this run's
            self._finish(act, close.state, "recovered", "system", ended_at=close.ended_at)
            if close.close_session:
                self._close_session("recovered", ended_at=close.ended_at)
            log.info("device %s activation %s closed by recovery (%s)", self.device_id, act.id, close.state)
        # Sent once the broker link is up (BrokerConnected), not into a link that is not there yet.
        self.off_owed = plan.off_owed
        if rows.device.flapping_since is not None:
            self._arm_flap_timer()
        self._refresh_state("start-up")

    # --- messages from MQTT and timers -------------------------------------------------------
    def on_receive(self, message):
        if isinstance(message, RunRequest):
            self._run_for_schedule(message)
            return
        if not isinstance(message, Replay):
            self.backlog.append(message)
        else:
            self.replay_armed = False
        try:
            self._catch_up()
        except DatabaseDown:
            self._safety_without_database(message)
            if not self.replay_armed:
                self.replay_armed = True
                tell_later(self.actor_ref, REPLAY_S, Replay())

    def _run_for_schedule(self, req: RunRequest) -> None:
        """A schedule's run, answered as the ask of the API is (the same checks, the same
        refusals), told back to the scheduler as RunSettled."""
        activation, error = None, None
        try:
            activation = self.activate(req.user_id, req.duration_s, "schedule", req.schedule_id)
        except Exception as exc:  # the device's refusal is the answer the run records
            error = exc
        try:
            req.reply_to.tell(RunSettled(req.run_id, req.schedule_id, activation, error))
        except pykka.ActorDeadError:
            log.warning("schedule %s run %s settled after the scheduler stopped", req.schedule_id, req.run_id)

    def _catch_up(self) -> None:
        """Handle the backlog in order, each message in one transaction; DatabaseDown leaves the rest."""
        if self.resync_needed:
            self._in_transaction(self._resync)
            self.resync_needed = False
        while self.backlog:
            message = self.backlog[0]
            try:
                self._in_transaction(self._dispatch, message)
            except DatabaseDown:
                raise
            except Exception:
                # A bug must not wedge the device behind one message (nor kill the actor).
                log.exception("device %s failed handling %r", self.device_id, message)
            self.backlog.popleft()

    def _in_transaction(self, fn, *args, **kwargs):
        try:
            # The pool pings a connection on checkout, so one that predates a database restart is
            # found out here, before memory is touched.
            self.db.connect(reuse_if_open=True)
        except OPERATIONAL_ERRORS as exc:
            log.warning("device %s: database unavailable (%s); %d message(s) wait", self.device_id, exc,
                        len(self.backlog))
            self._close_connection(broken=True)
            raise DatabaseDown() from exc
        outermost = self._deferred_on is None
        if outermost:
            self._deferred_on = []
        try:
            with self.db.atomic():
                result = fn(*args, **kwargs)
            if outermost:
                # Committed: only now may the pump be switched on, or a run could go unrecorded.
                for topic, payload in self._deferred_on:
                    self.mqtt.tell(Publish(topic, payload))
            return result
        except OPERATIONAL_ERRORS as exc:
            # Memory may have moved ahead of the rolled-back writes: rebuild it from the database.
            log.error("device %s: database failed mid-way (%s); resynchronising when it returns", self.device_id, exc)
            self.resync_needed = True
            self._close_connection(broken=True)
            raise DatabaseDown() from exc
        finally:
            if outermost:
                self._deferred_on = None
            self._close_connection()

    def _close_connection(self, broken: bool = False) -> None:
        try:
            if not self.db.is_closed() and not self.db.in_transaction():
                self.db.close()
            if broken and hasattr(self.db, "close_idle"):
                self.db.close_idle()
        except Exception:  # a connection already broken; the pool replaces it
            log.debug("closing a broken connection failed", exc_info=True)

    def _resync(self) -> None:
        """Forget memory and rebuild it from the database, as after a crash."""
        self._cancel_timer(self.off_timer)
        self._cancel_timer(self.owed_timer)
        self._cancel_timer(self.flap_timer)
        self.owed_timer = self.flap_timer = None
        self.owed_token += 1
        self.flap_token += 1
        if self.pending is not None:
            self._cancel_timer(self.pending.timer)
        self.rt.metrics.queued.dec(len(self.queue))
        self.queue.clear()
        self.current = self.pending = self.off_timer = None
        self._recover(DeviceRecords.load(self.device_id))
        self._pay_off_debt()

    def _safety_without_database(self, message) -> None:
        """An OFF that is due does not wait for the database: send it now, book it later."""
        what = machine.without_database(
            message.kind, message.token, current_id=self.current.id if self.current is not None else None,
            off_owed=self.off_owed, owed_token=self.owed_token,
            pending_off_id=self.pending.id if self.pending is not None and self.pending.action == "off" else None,
        ) if isinstance(message, TimerFired) else None
        if what == "off_now":
            log.warning("device %s: run %s is due to end while the database is away; OFF sent now",
                        self.device_id, message.token)
            self.off_owed = True
            self._send_untracked_off()
        elif what == "owed_again":
            # An owed OFF keeps being sent while the database is away; it is booked when it returns.
            self.owed_timer = None
            self._send_untracked_off()
            self._arm_owed_timer()
        elif what == "pending_again":
            # An OFF not acked yet is sent again now, and keeps being sent while the database is away.
            self.off_owed = True
            self._publish(self.pending.topic, self.pending.payload)
            self._arm_owed_timer()

    def _dispatch(self, message) -> None:
        if isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, StateReport):
            self._on_state(message)
        elif isinstance(message, Availability):
            self._on_availability(message)
        elif isinstance(message, TimerFired):
            if message.kind == "ack":
                self._on_ack_timeout(message.token)
            elif message.kind == "off":
                self._on_off_timer(message.token)
            elif message.kind == "owed":
                self._on_owed_timer(message.token)
            elif message.kind == "flap":
                self._on_flap_timer(message.token)
        elif isinstance(message, BrokerConnected):
            self._pay_off_debt()
            self._advance()
        else:
            log.warning("device %s ignores unknown message %r", self.device_id, message)

    def _on_ack(self, ack: Ack) -> None:
        p = self.pending
        if not machine.ack_applies(p.id if p is not None else None, ack.command_id):
            log.info("device %s: ack for %s is not awaited (late or repeated); ignored", self.device_id, ack.command_id)
            return
        self._cancel_timer(p.timer)
        self.pending = None
        self.rt.metrics.ack_latency.labels(p.action).observe(self.clock.monotonic() - p.sent_at)
        if p.action == "on":
            act = self.current
            if act is None or act.id != p.activation_id or act.state != "starting":
                self._refresh_state("ack")
                self._advance()
                return
            if ack.ok:
                self._start_running(act)
            else:
                if ack.state in ("on", "off"):
                    self.reported = ack.state
                self._finish(act, "failed", "device_refused", "device", detail=ack.error)
                self._alert("activation_failed", f"activation_failed:{act.id}", f"{self.device.name} did not start",
                            f"The pump refused to start: {ack.error or 'no reason given'}.", Audience.user(act.user_id, also_admins=True))
        else:
            if ack.ok:
                self.reported = "off"
                self._off_confirmed()
                self._close_session(p.reason)
                self._log("off", p.reason, p.actor, activation_id=p.activation_id)
            else:
                if ack.state in ("on", "off"):
                    self.reported = ack.state
                log.error("device %s refused OFF: %s", self.device_id, ack.error)
                self._off_not_confirmed(p, refused=ack.error or "no reason given")
        self._refresh_state(p.reason if p.action == "off" else "command")
        self._advance()

    def _on_ack_timeout(self, command_id: str) -> None:
        p = self.pending
        if p is None or p.id != command_id:
            return
        if machine.after_ack_timeout(p.attempts, self.config.ack_retries) == "resend":
            p.attempts += 1
            log.warning("device %s: no ack for %s %s, re-sending (attempt %d)", self.device_id, p.action, p.id, p.attempts)
            self._publish(p.topic, p.payload, p.action)
            p.timer = tell_later(self.actor_ref, self.config.ack_timeout_s, TimerFired("ack", p.id))
            return
        self.pending = None
        log.error("device %s: no ack for %s %s after %d attempts", self.device_id, p.action, p.id, p.attempts)
        if p.action == "on" and self.current is not None and self.current.id == p.activation_id:
            act = self.current
            self._finish(act, "failed", "ack_timeout", "system")
            self._alert("ack_timeout", f"ack_timeout:{act.id}", f"{self.device.name} did not answer",
                        "The pump did not confirm the start command; it was sent OFF for safety.",
                        Audience.user(act.user_id, also_admins=True))
            # For safety: the pump may have switched on without our hearing it. Owed until confirmed.
            self._send_untracked_off()
            self._owe_off()
        else:
            self._off_not_confirmed(p, refused=None)
        self._refresh_state("ack_timeout")
        self._advance()

    def _on_off_timer(self, activation_id: int) -> None:
        act = self.current
        if act is None or act.id != activation_id or act.state != "running":
            return
        self.off_timer = None
        self._stop_current("completed", "completed", "system")

    def _on_state(self, report: StateReport) -> None:
        awaiting_on_ack = self.pending is not None and self.pending.action == "on"
        if report.state == "on":
            self.reported = "on"
            meaning = machine.on_report(awaiting_on_ack=awaiting_on_ack, reason=report.reason,
                                        has_session=self.session is not None,
                                        unconfirmed_on=self.unconfirmed_on is not None)
            if meaning == "confirm_unconfirmed":
                # The ON sent before a crash did land: the pump has run since it was sent.
                act, self.unconfirmed_on = self.unconfirmed_on, None
                self._open_session(act, "command", started_at=from_db(act.started_at))
                self._log("on", "command", self._actor_of(act), activation_id=act.id,
                          detail="confirmed by the pump's report after a restart")
            elif meaning == "manual":
                # Recorded even while an OFF is on its way: the pump did run until that OFF lands.
                self._open_session(None, report.reason)
                self._log("on", report.reason, "device")
                if not self._flapping():
                    self._alert("device_on", f"device_on:session:{self.session.id}", self.device.name,
                                f"{self.device.name} was switched on ({report.reason}).", Audience.approved())
            self._pay_off_debt()
        else:
            self.reported = "off"
            self._off_confirmed()
            self.unconfirmed_on = None
            if self.session is not None:
                self._close_session(report.reason)
                self._log("off", report.reason, "device",
                          activation_id=self.current.id if self.current else None)
            act = self.current
            if act is not None and machine.off_report_ends_run(run_state=act.state, awaiting_on_ack=awaiting_on_ack):
                state, reason = machine.off_report_outcome(report.reason)
                self._finish(act, state, reason, "device")
                if reason == "fault":
                    self._alert("activation_failed", f"activation_failed:{act.id}", f"{self.device.name} fault",
                                "The pump reported a fault and switched off.", Audience.user(act.user_id, also_admins=True))
        self._refresh_state(report.reason)
        self._advance()

    def _on_availability(self, msg: Availability) -> None:
        self.available = msg.online
        self._refresh_state("online" if msg.online else "offline")
        if msg.online:
            self._pay_off_debt()
            self._advance()

    # --- requests from the API and the scheduler ----------------------------------------------
    @transactional
    def activate(self, user_id: int | None, duration_s: int, source: str = "api",
                 schedule_id: int | None = None, user_quota=UNKNOWN) -> dict:
        """``user_quota``: the user's daily minutes when the caller has them at hand (None: no quota)."""
        device = self._live_device()
        Gateway.check_run_length(device, duration_s, self.config.min_run_s)
        busy = self.current is not None or self.pending is not None or self.off_owed
        why = machine.refusal(available=self.available, off_stuck=self.off_stuck,
                              broker_connected=self.rt.broker.connected.is_set(), busy=busy,
                              queued=len(self.queue), queue_limit=self.config.queue_limit)
        if why == "device_offline":
            raise Conflict(f"{device.name} is offline; it cannot be started now.", "device_offline")
        if why == "off_unconfirmed":
            raise Conflict(f"{device.name} has not confirmed its last OFF; it takes no new runs until it does.",
                           "off_unconfirmed")
        if why == "broker_unavailable":
            raise Unavailable("The MQTT broker is not reachable; pumps cannot be started now.",
                              "broker_unavailable", retry_after=5)
        if why == "queue_full":
            raise TooManyRequests(
                f"{device.name} already has {len(self.queue)} requests waiting; try again later.", "queue_full",
                retry_after=max(1, int(self._reserved_s(self.clock.now()))),
            )
        self._check_quota(user_id, duration_s, user_quota)
        act = m.Activation.create(
            device=self.device_id, user=user_id, schedule=schedule_id, duration_s=duration_s,
            source=source, state="queued", created_at=to_db(self.clock.now()),
        )
        self.queue.append(act)
        self.rt.metrics.queued.inc()
        self.rt.metrics.activations_accepted.labels(source).inc()
        log.info("device %s activation %s queued for %ss (%s)", self.device_id, act.id, duration_s, source)
        self._changed(act)
        self._advance()
        return activation_view(act, self.clock.now())

    @transactional
    def cancel(self, activation_id: int, by: str) -> dict:
        for act in self.queue:
            if act.id == activation_id:
                self.queue.remove(act)
                self.rt.metrics.queued.dec()
                self._finish(act, "cancelled", "cancelled", by)
                return activation_view(act, self.clock.now())
        if self.current is not None and self.current.id == activation_id:
            act = self.current
            self._stop_current("stopped", "cancelled", by)
            return activation_view(act, self.clock.now())
        raise Conflict("This activation has already ended.", "activation_ended")

    @transactional
    def cancel_queued_of(self, user_id: int, reason: str = "owner_revoked") -> list[int]:
        """Cancel a user's queued activations (the user is no longer approved). A run already
        going is left to end at its time: it was asked for while the user was approved."""
        mine = [act for act in self.queue if act.user_id == user_id]
        for act in mine:
            self.queue.remove(act)
            self.rt.metrics.queued.dec()
            self._finish(act, "cancelled", reason, "system")
        return [act.id for act in mine]

    @transactional
    def force_shutdown(self, by: str) -> dict:
        """OFF at once, whatever the state; the queue is cancelled. Works for offline devices too."""
        cancelled = []
        while self.queue:
            act = self.queue.popleft()
            self.rt.metrics.queued.dec()
            self._finish(act, "cancelled", "force", by)
            cancelled.append(act.id)
        stopped = self.current.id if self.current is not None else None
        if self.current is not None:
            self._stop_current("stopped", "force", by)
        else:
            if self.pending is not None:
                self._cancel_timer(self.pending.timer)
                self.pending = None
            self._send("off", None, reason="force", actor=by)
        self._refresh_state("force")
        self._alert("force_shutdown", f"force_shutdown:{self.device_id}:{uuid.uuid4().hex}",
                    f"{self.device.name} force shutdown", f"{self.device.name} was shut down by an admin.", Audience.admins())
        return {"device_id": self.device_id, "stopped_activation_id": stopped, "cancelled_activation_ids": cancelled}

    @transactional
    def reload(self) -> dict:
        old, self.device = self.device, m.Device.get_by_id(self.device_id)
        if old is not None and old.protocol != self.device.protocol:
            # What the old firmware said no longer holds (legacy controllers never say "online").
            self.available = None
            self._refresh_state("protocol changed")
        return self.describe()

    @transactional
    def describe(self) -> dict:
        now = self.clock.now()
        return self.view((self._used_today_s(now), self._reserved_s(now)))

    def view(self, today: tuple[float, float]) -> dict:
        """The device as the API shows it, given today's (used, reserved) seconds; no database work."""
        device = self.device
        now = self.clock.now()
        used, reserved = today
        quota_s = self._device_quota_s()
        running = activation_view(self.current, now) if self.current is not None else None
        return {
            "id": device.id,
            "name": device.name,
            "protocol": device.protocol,
            "state": self.state,
            "available": self.available,
            "online": self.available is True,
            "running": running,
            "queue": [activation_view(a, now) for a in self.queue],
            "session_id": self.session.id if self.session is not None else None,
            "off_owed": self.off_owed,
            "flapping": device.flapping_since is not None,
            "daily_quota_minutes": quota_s / 60,
            "max_run_minutes": device.max_run_minutes,
            "today": {
                "used_s": round(used, 1),
                "used_minutes": round(used / 60, 2),
                "reserved_s": round(reserved, 1),
                "left_minutes": round(max(0.0, quota_s - used - reserved) / 60, 2),
            },
        }

    def go_status(self) -> dict:
        """The Go server's ``/device/{id}/status`` shape, kept for old clients."""
        act = self.current
        return {
            "device_id": self.device_id,
            "status": self.state,
            "active_until": iso(act.ends_at) if act is not None and act.state == "running" else None,
            "intended_duration": round(act.duration_s / 60, 3) if act is not None else None,
            "session_id": self.session.id if self.session is not None else None,
        }

    def summary(self) -> dict:
        """The little a WebSocket snapshot needs; no database work."""
        return {"device_id": self.device_id, "name": self.device.name, "state": self.state,
                "available": self.available,
                "activation_id": self.current.id if self.current is not None else None}

    # --- the machinery -----------------------------------------------------------------------
    def _advance(self) -> None:
        if not machine.may_start_next(running=self.current is not None, pending=self.pending is not None,
                                      queued=len(self.queue), off_owed=self.off_owed, available=self.available):
            return
        act = self.queue.popleft()
        self.rt.metrics.queued.dec()
        act.state = "starting"
        act.started_at = to_db(self.clock.now())  # when the ON was sent; the ack sets the confirmed start
        self.current = act
        pending = self._send("on", act, reason="command", actor=self._actor_of(act))
        act.command_id = pending.id
        act.save()
        self._changed(act)
        self._refresh_state("command")

    def _start_running(self, act: m.Activation) -> None:
        now = self.clock.now()
        act.state = "running"
        act.started_at = to_db(now)
        act.ends_at = to_db(now + dt.timedelta(seconds=act.duration_s))
        act.save()
        self.reported = "on"
        if self.session is not None:
            self._close_session("superseded")
        self._open_session(act, "command")
        self._log("on", "command", self._actor_of(act), activation_id=act.id)
        self.off_timer = tell_later(self.actor_ref, act.duration_s, TimerFired("off", act.id))
        self._changed(act)
        self._alert("device_on", f"device_on:activation:{act.id}", self.device.name,
                    f"{self.device.name} is ON for {act.duration_s / 60:g} minutes.", Audience.approved())

    def _stop_current(self, state: str, reason: str, by: str) -> None:
        act = self.current
        if self.pending is not None:
            self._cancel_timer(self.pending.timer)
            self.pending = None
        self._finish(act, state, reason, by)
        self._send("off", None, reason=reason, actor=by, activation_id=act.id)
        self._refresh_state(reason)

    def _finish(self, act: m.Activation, state: str, reason: str, by: str, *, detail: str | None = None,
                ended_at: dt.datetime | None = None) -> None:
        act.state, act.reason, act.ended_by = state, reason, by
        act.ended_at = to_db(ended_at or self.clock.now())
        # Only what changed: the user may have been deleted meanwhile (user_id is stale).
        act.save(only=[m.Activation.state, m.Activation.reason, m.Activation.ended_by, m.Activation.ended_at])
        self.rt.metrics.activations.labels(state, reason).inc()
        if self.current is not None and self.current.id == act.id:
            self.current = None
            self._cancel_timer(self.off_timer)
            self.off_timer = None
        log.info("device %s activation %s %s (reason %s, by %s)%s", self.device_id, act.id, state, reason, by,
                 f": {detail}" if detail else "")
        self._changed(act)

    def _send(self, action: str, act: m.Activation | None, *, reason: str, actor: str,
              activation_id: int | None = None) -> Pending:
        command_id = commands.new_id()
        activation_id = act.id if act is not None else activation_id
        topic, payload = commands.encode(self.rt.topics, self.device_id, self.device.protocol, action,
                                         now=self.clock.now(), command_id=command_id, activation_id=activation_id,
                                         duration_s=act.duration_s if action == "on" else None)
        self._publish(topic, payload, action)
        pending = Pending(command_id, action, topic, payload, activation_id, reason, actor,
                          sent_at=self.clock.monotonic(), sent_wall=self.clock.now())
        pending.timer = tell_later(self.actor_ref, self.config.ack_timeout_s, TimerFired("ack", command_id))
        self.pending = pending
        return pending

    def _send_untracked_off(self) -> None:
        self._publish(*commands.encode(self.rt.topics, self.device_id, self.device.protocol, "off",
                                       now=self.clock.now()))

    def _publish(self, topic: str, payload: str, action: str = "off") -> None:
        """An OFF goes at once, always; an ON waits for the transaction that records it to commit."""
        if action == "on" and self._deferred_on is not None:
            self._deferred_on.append((topic, payload))
        else:
            self.mqtt.tell(Publish(topic, payload))

    def _open_session(self, act: m.Activation | None, cause: str, started_at: dt.datetime | None = None) -> None:
        self.session = records.open_session(self.device_id, act, cause, started_at or self.clock.now())

    def _close_session(self, reason: str, ended_at: dt.datetime | None = None) -> None:
        if self.session is not None:
            records.close_session(self.session, reason, ended_at or self.clock.now())
            self.session = None

    def _log(self, event: str, cause: str, actor: str | None, *, activation_id: int | None = None,
             detail: str | None = None) -> None:
        records.write_log(self.device_id, self.session, event, cause, actor, self.clock.now(),
                          activation_id=activation_id, detail=detail)

    def _derive_state(self) -> str:
        return machine.derive_state(self.available, self.pending.action if self.pending else None, self.reported)

    def _refresh_state(self, reason: str) -> None:
        new = self._derive_state()
        if new == self.state:
            return
        previous, self.state = self.state, new
        self.rt.metrics.device_state(previous, new)
        activation_id = self.current.id if self.current is not None else None
        log.info("device %s state %s -> %s (activation %s, reason %s)", self.device_id, previous, new,
                 activation_id, reason, extra={"device_id": self.device_id, "state": new, "previous": previous,
                                               "activation_id": activation_id, "reason": reason})
        self.rt.bus.publish(DeviceStateChanged(
            device_id=self.device_id, state=new, previous=previous, available=self.available,
            activation_id=activation_id, reason=reason, at=self.clock.now(),
        ))

    def _changed(self, act: m.Activation) -> None:
        self.rt.bus.publish(ActivationChanged(activation=activation_view(act, self.clock.now()), at=self.clock.now()))

    def _alert(self, kind: str, key: str, title: str, body: str, audience: Audience) -> None:
        self.rt.bus.publish(Alert(key=key, kind=kind, device_id=self.device_id, title=title, body=body,
                                  audience=audience))

    @staticmethod
    def _cancel_timer(timer: threading.Timer | None) -> None:
        if timer is not None:
            timer.cancel()

    @staticmethod
    def _actor_of(act: m.Activation) -> str:
        if act.schedule_id is not None:
            return f"schedule:{act.schedule_id}"
        return f"user:{act.user_id}" if act.user_id is not None else "system"

    def _live_device(self) -> m.Device:
        if self.device is None or self.device.deleted_at is not None:
            raise NotFound(f"There is no device {self.device_id}.", "device_not_found")
        return self.device
